"""A WhatsApp chat in the browser, for trying a flow as its users will see it (``fsm serve
--simulator``). The page posts each message to the bot's real ``/webhook`` as Meta would, and
the bot's sends come back through a fake Graph API served beside it; see docs/simulator.md.

Modules: :mod:`.meta` (inbound webhook bodies, Meta's shape), :mod:`.hub` (each chat's events,
as server-sent events), :mod:`.app` (the routes), ``static/`` (the page: HTML, CSS and JS, no
external asset).
"""

from __future__ import annotations

from adapters.whatsapp.simulator.app import Contact, Simulator

__all__ = ["Contact", "Simulator"]
