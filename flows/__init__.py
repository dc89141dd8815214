"""Reference flows built on the fsm library."""
