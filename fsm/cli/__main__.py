"""``python -m fsm.cli``: the same as the ``fsm`` command."""

from fsm.cli import main

if __name__ == "__main__":
    main(prog_name="fsm")
