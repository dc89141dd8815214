"""A flow that keeps personal data under keys it declares sensitive (an address, a drug), for the
tests that no display path shows them: ``fsm inspect``/``ls``/``history``/``quarantine show``,
the simulator's panel, logs, exceptions and reprs; and that ``fsm backup`` keeps them."""

from __future__ import annotations

from typing import Any

from fsm import Context, Flow, Outcome, Stage, action, step

ADDRESS = "12 Elm St"
DRUG = "Insulin"
#: Every value the flow keeps that no display may show.
PERSONAL = (ADDRESS, DRUG)
REF = "tests.fsm.sensitive_flow:Pharmacy"


class Courier:
    """The pharmacy's courier API; ``broken`` makes it refuse, quoting the address as real
    APIs do in their error messages."""

    def __init__(self) -> None:
        self.broken = False
        self.seen: list[str] = []  # repr(ctx) and repr(ctx.data) as the steps saw them

    def send(self, address: str) -> None:
        if self.broken:
            raise RuntimeError(f"courier refused {address!r}")


class Pharmacy(Flow):
    name = "pharmacy"
    sensitive = ("address", "drug")
    takes_first_message = True
    stages = (Stage("order", ("drug", "address", "send", "done")),)
    transitions = ()

    def __init__(self, courier: Courier | None = None) -> None:
        self.courier = courier or Courier()

    @step("order", "drug")
    def drug(self, ctx: Context) -> Outcome:
        return ctx.stay("Where should we deliver it?", step="address", set={"drug": ctx.text})

    @step("order", "address")
    def address(self, ctx: Context) -> Outcome:
        self.courier.seen += [repr(ctx), repr(ctx.data)]
        where: dict[str, Any] = {"address": ctx.text, "floor": 3}
        return ctx.stay(
            step="send", set={"address": ctx.text, "delivery": where, "note": "ring twice"}
        )

    @action("order", "send")
    def send(self, ctx: Context) -> Outcome:
        self.courier.seen += [repr(ctx), repr(ctx.data)]
        self.courier.send(ctx.data["address"])
        return ctx.stay("On its way.", step="done")

    @step("order", "done")
    def done(self, ctx: Context) -> Outcome:
        return ctx.stay("Your order is on its way.")
