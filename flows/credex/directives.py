"""Transcript directives for the fake Credex API (``! api ...`` lines; see fsm.transcript).

- ``! api fail CALL STATUS [message]``: the next CALL fails with that status (401: the token is
  refused) before doing anything;
- ``! api garble CALL``: the next CALL answers a response of an unexpected shape (its effect,
  if any, still happens, as when a server changes its format);
- ``! api expire-tokens``: every token issued so far is now expired on the API's side.
"""

from __future__ import annotations

from collections.abc import Sequence

from flows.credex.api import CALLS, ApiError, Unauthorized
from flows.credex.fake import FakeCredexApi
from fsm.transcript import Directive

USAGE = "use: ! api fail CALL STATUS [message] | ! api garble CALL | ! api expire-tokens"


def directives(api: FakeCredexApi) -> dict[str, Directive]:
    """The ``api`` directive, bound to ``api``."""

    def run(args: Sequence[str]) -> None:
        if not args:
            raise ValueError(USAGE)
        what, rest = args[0], list(args[1:])
        if what == "expire-tokens" and not rest:
            api.expire_tokens()
            return
        if what in ("fail", "garble") and rest and rest[0] not in CALLS:
            raise ValueError(f"unknown Credex call {rest[0]!r}; expected one of {', '.join(CALLS)}")
        if what == "fail" and len(rest) >= 2 and rest[1].isdigit():
            call, status = rest[0], int(rest[1])
            message = " ".join(rest[2:]) or "injected failure"
            error = Unauthorized(call) if status == 401 else ApiError(status, call, message)
            api.fail_next(call, error)
            return
        if what == "garble" and len(rest) == 1:
            api.raw_response_override(rest[0], {"unexpected": "shape"})
            return
        raise ValueError(USAGE)

    return {"api": run}
