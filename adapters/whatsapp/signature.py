"""The ``X-Hub-Signature-256`` header: an HMAC-SHA256 of the raw body with the app secret.

Checked on the bytes exactly as received, before anything is parsed, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def signature(body: bytes, app_secret: str) -> str:
    """The header value Meta sends with ``body`` (tests and the simulator sign with it)."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def signature_problem(header: str | None, body: bytes, app_secret: str) -> str | None:
    """Why ``header`` does not sign ``body`` ("missing", "malformed", "mismatch"); None if it
    does. The comparison takes the same time wherever the digests differ."""
    if not header:
        return "missing"
    if not header.startswith(PREFIX) or len(header) != len(PREFIX) + 64:
        return "malformed"
    expected = signature(body, app_secret)
    if not hmac.compare_digest(expected.encode(), header.strip().lower().encode()):
        return "mismatch"
    return None
