"""Settings read from the environment that the adapters share."""

from __future__ import annotations

from collections.abc import Mapping

_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """The yes/no variable ``name`` (unset or empty: ``default``); ``ValueError`` naming the
    variable, not its value, for anything else."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off")
