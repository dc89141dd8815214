"""Small flows the framework tests run: a counter, and a vault with a protected area.

They are independent of the reference bot so the framework's tests say what the framework does.
"""

from __future__ import annotations

import threading
import time

import jwt

from fsm import Context, FakeClock, Flow, Login, Logout, Outcome, Stage, document, on_enter, step

SECRET = b"vault-test-secret-0123456789abcdef"


class Counter(Flow):
    """Every message adds one to ``count``; "slow" counts under the lease lock."""

    name = "counter"

    takes_first_message = True
    stages = (Stage("idle", ("start",)), Stage("counting", ("count", "locked")))
    transitions = (("begin", "idle", "counting"), ("stop", "counting", "idle"))

    def __init__(self) -> None:
        self.side_effects = 0
        self._guard = threading.Lock()
        self.in_critical = 0
        self.overlaps = 0

    @step("idle", "start")
    def start(self, ctx: Context) -> Outcome:
        if ctx.text == "locked":
            return ctx.go("begin", "locked mode", step="locked", set={"count": 0})
        return ctx.go("begin", "counting", set={"count": 0})

    @step("counting", "count")
    def count(self, ctx: Context) -> Outcome:
        if ctx.text == "stop":
            return ctx.go("stop", "stopped", unset=["count"])
        if ctx.text == "boom":
            raise RuntimeError("handler bug")
        if ctx.text == "jump":
            return ctx.stay(step="nowhere")
        n = ctx.data["count"] + 1
        return ctx.stay(str(n), set={"count": n})

    @step("counting", "locked", side_effects=True)
    def locked(self, ctx: Context) -> Outcome:
        with self._guard:
            self.in_critical += 1
            if self.in_critical > 1:
                self.overlaps += 1
        time.sleep(0.0005)  # widen the window a race would need
        with self._guard:
            self.side_effects += 1
            self.in_critical -= 1
        n = ctx.data["count"] + 1
        return ctx.stay(str(n), set={"count": n})


def issue_token(
    clock: FakeClock,
    *,
    sub: str = "u1",
    ttl: float = 600,
    key: bytes = SECRET,
    iat: float | None = None,
) -> str:
    issued = clock.now() if iat is None else iat
    return jwt.encode(
        {"sub": sub, "iat": int(issued), "exp": int(issued + ttl)}, key, algorithm="HS256"
    )


class Vault(Flow):
    """start -> auth (password) -> home (protected) -> deposit (protected, two steps)."""

    name = "vault"

    takes_first_message = True
    auth_stage = "auth"
    stages = (
        Stage("start", ("hello",)),
        Stage("auth", ("password",)),
        Stage("home", ("menu",), protected=True),
        Stage("deposit", ("amount", "confirm"), protected=True),
    )
    transitions = (
        ("sign_in", ["start", "home"], "auth"),
        ("open_home", ["auth", "home", "deposit"], "home"),
        ("open_deposit", "home", "deposit"),
        ("sneak_in", "start", "home"),  # allowed by the graph, refused by the token guard
    )

    def __init__(self, clock: FakeClock, *, token_ttl: float = 600) -> None:
        self.clock = clock
        self.token_ttl = token_ttl
        self.next_token: str | None = None  # lets a test hand in a specific token

    @step("start", "hello")
    def hello(self, ctx: Context) -> Outcome:
        if ctx.text == "sneak":
            return ctx.go("sneak_in", "in without a token?")
        if ctx.text == "teleport":
            return ctx.go("open_deposit", "straight to deposit?")
        return ctx.go("sign_in")

    @on_enter("auth", "password")
    def ask_password(self, ctx: Context) -> list[str]:
        return ["password?"]

    @step("auth", "password")
    def password(self, ctx: Context) -> Outcome:
        if ctx.text != "open sesame":
            return ctx.stay("wrong password")
        token = self.next_token or issue_token(self.clock, sub=ctx.user_key, ttl=self.token_ttl)
        self.next_token = None
        return ctx.go("open_home", "welcome", auth=Login(token), resume=True)

    @on_enter("home", "menu")
    def show_menu(self, ctx: Context) -> list[str]:
        return [f"menu (balance {ctx.data.get('balance', 0)})"]

    @step("home", "menu")
    def menu(self, ctx: Context) -> Outcome:
        if ctx.text == "deposit":
            return ctx.go("open_deposit")
        if ctx.text == "logout":
            return ctx.go("sign_in", "bye", auth=Logout())
        if ctx.text == "refresh":
            token = self.next_token or issue_token(self.clock, sub=ctx.user_key)
            self.next_token = None
            return ctx.stay("refreshed", auth=Login(token))
        return ctx.stay("say deposit or logout")

    @on_enter("deposit", "amount")
    def ask_amount(self, ctx: Context) -> list[str]:
        return ["how much?"]

    @step("deposit", "amount")
    def amount(self, ctx: Context) -> Outcome:
        if not ctx.text.isdigit() or int(ctx.text) <= 0:
            return ctx.stay("a positive whole number, please")
        return ctx.stay(
            f"deposit {ctx.text}? yes/no", step="confirm", set={"amount": int(ctx.text)}
        )

    @step("deposit", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        if ctx.text == "yes":
            balance = ctx.data.get("balance", 0) + ctx.data["amount"]
            return ctx.go("open_home", "done", set={"balance": balance}, unset=["amount"])
        if ctx.text == "no":
            return ctx.go("open_home", "cancelled", unset=["amount"])
        return ctx.stay("yes or no?")


class Receipts(Flow):
    """Every message is answered with a receipt made from bytes (a document, uploaded before
    the save and sent by its media id when the engine has a media channel), then a text."""

    name = "receipts"
    takes_first_message = True
    stages = (Stage("open", ("note",)),)
    transitions = ()

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        receipt = f"receipt for {ctx.text}\n".encode()
        file = document(receipt, filename="receipt.txt", mime_type="text/plain")
        return ctx.stay(file, f"noted {ctx.text}")
