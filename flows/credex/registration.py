"""The registration stage: onboarding for a phone number Credex does not know.

``welcome`` (register or not now) -> ``first_name`` -> ``last_name`` -> ``photo`` (an optional
profile photo: sent, it is shown back; *Skip* with a tap) -> ``confirm`` -> ``onboard``
(action: onboardMember) -> menu, signed in with the token onboarding returns. The photo is
kept as the channel's media id and metadata (``data["photo"]``), never as bytes.
Names are free text: "cancel" typed while one is asked for may be a name, so the engine asks
"Stop the registration?" (the stage's declared :data:`EXIT`) instead of guessing. Idle at
``confirm``: a reminder after 10 minutes, and the names dropped 30 minutes after arriving
(back to the welcome), as at the offer's confirmation.
"""

from __future__ import annotations

from flows.credex.api import ApiError, ApiResponseError, LoginResult, MemberNotFound
from flows.credex.base import (
    DROP_AFTER,
    REMIND_AFTER,
    STILL_THERE,
    UNREACHABLE,
    CredexSteps,
    dropped,
    maybe_sent,
    problem,
)
from flows.credex.dashboard import Summary
from flows.credex.inputs import DEFAULT_DENOM, is_greeting, parse_name, words
from fsm import (
    Context,
    Exit,
    Login,
    Outcome,
    Reply,
    action,
    buttons,
    image,
    on_enter,
    pick,
    step,
    timeout,
)

NAME_KEYS = ("first_name", "last_name", "photo")
NAME_RULE = "3 to 50 letters; spaces, hyphens and apostrophes are fine"
WELCOME = buttons(
    "Welcome to Credex! This number has no Credex account yet. Would you like to register?",
    [("register", "Register"), ("later", "Not now")],
)
REGISTER = buttons(
    "Register?", [("confirm", "Confirm"), ("change", "Change names"), ("cancel", "Cancel")]
)
PHOTO = buttons("Would you like a profile photo? Send one now, or tap *Skip*.", [("skip", "Skip")])
CANCELLED = "Registration cancelled. Send *hi* whenever you want to start again."
#: ... after an attempt that timed out: the account may exist already.
MAYBE_REGISTERED = "Stopped. Your registration may still have gone through: send *hi* to check."


def _left(ctx: Context) -> str:
    return MAYBE_REGISTERED if ctx.uncertain else CANCELLED


#: The registration's way out: back to the welcome, the names typed so far deleted.
EXIT = Exit("welcome", say=_left, ask="Stop the registration?", unset=NAME_KEYS)


class RegistrationSteps(CredexSteps, abstract=True):
    def signed_in(self, ctx: Context, result: LoginResult, *said: str) -> Outcome:
        """To the menu with a new token (the engine verifies it) and a fresh dashboard."""
        return ctx.go(
            "show_menu",
            *said,
            auth=Login(result.token),
            set={"dashboard": Summary.of(result.dashboard).stored()},
            unset=NAME_KEYS,
            resume=True,
        )

    @on_enter("registration", "welcome", blocking=False)
    def show_welcome(self, ctx: Context) -> list[Reply]:
        return [WELCOME]

    @step("registration", "welcome")
    def welcome(self, ctx: Context) -> Outcome:
        if is_greeting(ctx.text):  # maybe registered elsewhere meanwhile: try to sign in
            try:
                return self.signed_in(ctx, self.api.login(ctx.user_key))
            except MemberNotFound:
                return ctx.stay(WELCOME)
            except ApiError as exc:
                return ctx.stay(problem(exc))
        chosen = pick(WELCOME, ctx.text)
        if chosen is None and words(ctx.text) in {"yes", "register", "ok"}:
            chosen = WELCOME.options[0]
        if chosen is None:
            return ctx.stay("Please choose *Register* or *Not now*.", WELCOME)
        if chosen.id == "later":
            return ctx.stay("No problem. Send *hi* whenever you want to register.")
        return ctx.stay(step="first_name")

    @on_enter("registration", "first_name", blocking=False)
    def ask_first_name(self, ctx: Context) -> list[str]:
        return ["What is your first name? (Send *cancel* to stop.)"]

    @step("registration", "first_name", blocking=False, free_text=True)
    def first_name(self, ctx: Context) -> Outcome:
        name = parse_name(ctx.text)
        if name is None:
            return ctx.stay(f"A first name is {NAME_RULE}. What is your first name?")
        return ctx.stay(step="last_name", set={"first_name": name})

    @on_enter("registration", "last_name", blocking=False)
    def ask_last_name(self, ctx: Context) -> list[str]:
        return [f"Thanks, {ctx.data['first_name']}. What is your last name?"]

    @step("registration", "last_name", blocking=False, free_text=True)
    def last_name(self, ctx: Context) -> Outcome:
        name = parse_name(ctx.text)
        if name is None:
            first = ctx.data["first_name"]
            return ctx.stay(
                f"A last name is {NAME_RULE}. What is your last name? (First name kept: {first}.)"
            )
        return ctx.stay(step="photo", set={"last_name": name})

    @on_enter("registration", "photo", blocking=False)
    def ask_photo(self, ctx: Context) -> list[Reply]:
        return [PHOTO]

    @step("registration", "photo", accepts={"image"})
    def photo(self, ctx: Context) -> Outcome:
        media = ctx.media
        if media is None:
            if pick(PHOTO, ctx.text) is not None or words(ctx.text) in {"no", "skip", "later"}:
                return ctx.stay(step="confirm")
            return ctx.stay("Please send a photo, or tap *Skip*.", PHOTO)
        # Shown back: the engine fetches it from the channel and sends it as a new image.
        shown = image(media, caption="Your profile photo.")
        return ctx.stay(shown, step="confirm", set={"photo": media})

    @on_enter("registration", "confirm", blocking=False)
    def ask_register(self, ctx: Context) -> list[Reply]:
        full = f"{ctx.data['first_name']} {ctx.data['last_name']}"
        photo = " with your photo" if ctx.data.get("photo") else ""
        return [REGISTER.with_body(f"Register as *{full}*{photo}?")]

    @timeout("registration", "confirm", after=REMIND_AFTER)
    def remind_registration(self, ctx: Context) -> Outcome:
        full = f"{ctx.data['first_name']} {ctx.data['last_name']}"
        return ctx.stay(REGISTER.with_body(f"{STILL_THERE} Register as *{full}*?"))

    @timeout("registration", "confirm", after=DROP_AFTER, extends_session=True)
    def drop_registration(self, ctx: Context) -> Outcome:
        said = dropped(
            ctx,
            "Your registration",
            "Start again whenever you are ready.",
            maybe="It may still have gone through: send *hi* to check.",
        )
        return ctx.stay(said, step="welcome", unset=NAME_KEYS)

    @step("registration", "confirm", blocking=False)
    def confirm_registration(self, ctx: Context) -> Outcome:
        chosen = pick(REGISTER, ctx.text)
        folded = words(ctx.text)
        if chosen is None and folded in {"yes", "y", "ok"}:
            chosen = REGISTER.options[0]
        if chosen is None and folded in {"no", "n"}:
            chosen = REGISTER.options[2]
        if chosen is None:
            return ctx.stay("Please choose *Confirm*, *Change names* or *Cancel*.", REGISTER)
        if chosen.id == "change":
            return ctx.stay(step="first_name", unset=NAME_KEYS)
        if chosen.id == "cancel":  # the way out, which says so honestly after a timeout
            return ctx.exit()
        return ctx.stay(step="onboard")

    @action("registration", "onboard")
    def onboard(self, ctx: Context) -> Outcome:
        first, last = ctx.data["first_name"], ctx.data["last_name"]
        try:
            result = self.api.onboard_member(
                first, last, ctx.user_key, DEFAULT_DENOM, idempotency_key=ctx.idempotency_key
            )
            return self.signed_in(ctx, result, f"Welcome to Credex, {first}!")
        except ApiResponseError as exc:
            return ctx.stay(problem(exc), step="welcome", unset=NAME_KEYS)
        except ApiError as exc:
            if exc.status == 409:  # registered meanwhile (another device): sign in instead
                try:
                    return self.signed_in(ctx, self.api.login(ctx.user_key))
                except ApiError:
                    return ctx.stay(UNREACHABLE, step="welcome", unset=NAME_KEYS)
            if exc.status < 500:  # refused: nothing happened
                return ctx.stay(problem(exc), step="confirm")
            return ctx.retry_later(maybe_sent(exc), step="confirm")
