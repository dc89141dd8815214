"""The transport's Prometheus metrics, in a registry of its own (served at ``/metrics``).

Labels are bounded: outcomes, message kinds, status names, error codes. No phone number,
message id, token or text is ever a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WhatsAppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.updates = Counter(
            "fsm_whatsapp_updates",
            "Webhook POSTs, by outcome (ok, bad_signature, bad_request, too_large, "
            "unavailable, ignored).",
            ["outcome"],
            registry=r,
        )
        self.messages = Counter(
            "fsm_whatsapp_messages",
            "User messages, by what became of them (applied, duplicate, unsupported, "
            "malformed, failed, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.signature_failures = Counter(
            "fsm_whatsapp_signature_failures",
            "POSTs refused for their signature (missing, malformed, mismatch).",
            ["reason"],
            registry=r,
        )
        self.statuses = Counter(
            "fsm_whatsapp_statuses",
            "Status updates of our own messages (sent, delivered, read, failed).",
            ["status"],
            registry=r,
        )
        self.sends = Counter(
            "fsm_whatsapp_sends",
            "Graph API send attempts, by outcome (sent, retry, failed) and error code.",
            ["outcome", "code"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "fsm_whatsapp_send_seconds",
            "Graph API send latency (each attempt).",
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "fsm_whatsapp_replies_pending",
            "Replies this process left pending (retries ran out, or the account is refused), "
            "summed over users; each is sent at the user's next delivery.",
            registry=r,
        )
        self.store_up = Gauge(
            "fsm_store_up",
            "1 if the store answered a probe at this scrape, else 0.",
            registry=r,
        )
        self.mark_read = Counter(
            "fsm_whatsapp_mark_read",
            "Mark-as-read requests, by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self._outside_world(r)
        self._messaging_limit(r)
        self._delivery(r)

    def _delivery(self, r: CollectorRegistry) -> None:
        """What became of replies outside the window and of messages Meta later failed."""
        self.delivery_failures = Counter(
            "fsm_whatsapp_delivery_failures",
            "Our messages Meta reported failed (a failed status), by error code: a known "
            "code, other, or none; once per message in this process.",
            ["code"],
            registry=r,
        )
        self.window_closed = Counter(
            "fsm_whatsapp_window_closed",
            "Replies to a user whose 24-hour window was closed, by what became of them "
            "(template: sent as its template; dropped: no template, not sent; kept: no "
            "template, kept pending until the user writes).",
            ["outcome"],
            registry=r,
        )

    def _outside_world(self, r: CollectorRegistry) -> None:
        """The metrics of ``POST /events`` and of the ticker."""
        self.events = Counter(
            "fsm_whatsapp_events",
            "POST /events, by outcome (applied, duplicate, ignored, bad_signature, bad_request, "
            "too_large, refused, failed, unavailable, held).",
            ["outcome"],
            registry=r,
        )
        self.timer_ticks = Counter(
            "fsm_timer_ticks",
            "Rounds of this process's ticker, by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.timers_due = Gauge(
            "fsm_timers_due",
            "Timers due now and not claimed by a ticker (the backlog; store-wide, sampled by "
            "the ticker each round and at each scrape).",
            registry=r,
        )
        self.timers_claimed = Gauge(
            "fsm_timers_claimed",
            "Timers claimed by tickers at work (store-wide).",
            registry=r,
        )
        self.timers_overdue = Gauge(
            "fsm_timers_overdue_seconds",
            "How late the oldest timer due and not yet claimed is (0: none is due).",
            registry=r,
        )

    def _messaging_limit(self, r: CollectorRegistry) -> None:
        """The metrics of the messaging limit (:mod:`adapters.whatsapp.limits`)."""
        self.limit = Gauge(
            "fsm_whatsapp_messaging_limit",
            "Unique users this process may send business-initiated messages (templates "
            "outside the 24-hour window) to in a moving 24 hours (0: no limit).",
            registry=r,
        )
        self.limit_users = Gauge(
            "fsm_whatsapp_messaging_limit_users",
            "Unique users this process sent a business-initiated message to in the last 24 "
            "hours (counted against the limit).",
            registry=r,
        )
        self.limit_waiting = Gauge(
            "fsm_whatsapp_messaging_limit_waiting",
            "Users whose replies are held for the messaging limit (pending, sent when a slot "
            "frees).",
            registry=r,
        )
        self.limit_held = Counter(
            "fsm_whatsapp_messaging_limit_held",
            "Times a user's replies were held for the messaging limit (once each time a user "
            "starts waiting).",
            registry=r,
        )
