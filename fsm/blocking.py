"""An :class:`~fsm.AsyncEngine` behind :class:`~fsm.Engine`'s blocking interface.

For the places that are synchronous by nature: the conversation testing kit
(:mod:`fsm.testing`), transcripts and ``fsm chat``. Every call runs on one background event
loop per process, so the async store's connections always stay on the loop that opened them,
and calls from several threads at once run as concurrent tasks on that loop (as concurrent
webhook requests would). Production code awaits the engine itself.

>>> engine = blocking(AsyncEngine(flow, AsyncMemoryStore()))    # doctest: +SKIP
>>> engine.handle("user-1", "hi").texts                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fsm.async_engine import AsyncEngine
from fsm.attachments import Attachment
from fsm.background import background_loop as background_loop
from fsm.background import run as run

if TYPE_CHECKING:
    from fsm.engine import Engine
    from fsm.protocol import Result
    from fsm.snapshot import Snapshot


class BlockingEngine:
    """``handle``, ``notify``, ``fire_due``, ``confirm`` and ``peek`` of an
    :class:`~fsm.AsyncEngine`, blocking; every other attribute (``stats``, ``spec``,
    ``clock``, ...) is the async engine's own. ``store`` is the blocking view of its store
    where it has one (``AsyncMemoryStore.sync``), else the async store itself."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def store(self) -> Any:
        return getattr(self.engine.store, "sync", self.engine.store)

    def handle(
        self,
        user_id: str,
        text: str,
        *,
        message_id: str | None = None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Result:
        return run(
            self.engine.handle(
                user_id, text, message_id=message_id, pressed=pressed, attachment=attachment
            )
        )

    def notify(
        self,
        user_id: str,
        event: str,
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Result:
        return run(self.engine.notify(user_id, event, data=data, event_id=event_id))

    def fire_due(
        self,
        *,
        limit: int | None = None,
        on_result: Callable[[str, Result], None] | None = None,
    ) -> int:
        """As :meth:`fsm.Engine.fire_due`; ``on_result`` is called on the background loop."""
        return run(self.engine.fire_due(limit=limit, on_result=on_result))

    def confirm(self, user_id: str, sent: Iterable[str], *, lease: str | None = None) -> bool:
        return run(self.engine.confirm(user_id, sent, lease=lease))

    def peek(self, user_id: str) -> Snapshot | None:
        return run(self.engine.peek(user_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def __repr__(self) -> str:
        return f"blocking({self.engine!r})"


def blocking(engine: Engine | AsyncEngine | BlockingEngine) -> Engine | BlockingEngine:
    """``engine`` with a blocking ``handle``: an :class:`~fsm.Engine` as it is, an
    :class:`~fsm.AsyncEngine` wrapped in a :class:`BlockingEngine`."""
    if isinstance(engine, AsyncEngine):
        return BlockingEngine(engine)
    return engine
