"""``fsm chat`` sends what a phone sends: a file (``/send PATH [caption]``) and a place
(``/location LAT,LONG [name]``), to the reference Credex bot, and shows the bot's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fsm.cli import main

ALICE = "263770000001"
NEWCOMER = "263779990001"  # a number the fake Credex API does not know: registration
PNG = b"\x89PNG\r\n\x1a\n" + bytes(3000)
#: To the registration's photo step, as a new number.
TO_PHOTO = "hi\nRegister\nAnna\nBanda\n"


def chat(typed: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["chat", *args], input=typed)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "me.png"
    path.write_bytes(PNG)
    return path


@pytest.mark.parametrize("engine", [[], ["--async"]], ids=["sync", "async"])
def test_a_photo_sent_at_the_photo_step_is_shown_back(png: Path, engine: list[str]) -> None:
    done = chat(f"{TO_PHOTO}/send {png} me in Harare\n", "--user", NEWCOMER, *engine)
    assert done.exit_code == 0, done.output
    assert "[registration.photo v4]" in done.output
    assert "[you sent image: me.png, image/png, 3 KB]" in done.output
    # The engine downloaded it from the chat's media channel and sent it back as its own.
    assert "bot> [image: 3 KB]\n     Your profile photo." in done.output
    assert "Register as *Anna Banda* with your photo?" in done.output
    assert "[registration.confirm v5]" in done.output


def test_a_path_with_spaces_is_quoted(tmp_path: Path) -> None:
    photo = tmp_path / "my photo.png"
    photo.write_bytes(PNG)
    done = chat(f'{TO_PHOTO}/send "{photo}"\n', "--user", NEWCOMER)
    assert done.exit_code == 0, done.output
    assert "[you sent image: my photo.png, image/png, 3 KB]" in done.output
    assert "bot> [image: 3 KB]" in done.output


def test_a_document_at_the_photo_step_gets_its_prompt_again(tmp_path: Path) -> None:
    """The photo step accepts an image only: a document gets the step's prompt again."""
    scan = tmp_path / "id-card.pdf"
    scan.write_bytes(b"%PDF-1.4\n" + bytes(100))
    done = chat(f"{TO_PHOTO}/send {scan} my ID\n", "--user", NEWCOMER)
    assert done.exit_code == 0, done.output
    assert "[you sent document: id-card.pdf, application/pdf, 109 B]" in done.output
    assert done.output.count("Would you like a profile photo?") == 2
    assert done.output.rstrip().endswith("[registration.photo v5]\nyou>")


def test_a_place_at_a_text_only_step_gets_the_unsupported_reply() -> None:
    done = chat("hi\n/location -17.8292,31.0522 Harare office\n", "--user", ALICE)
    assert done.exit_code == 0, done.output
    assert "bot> Sorry, I can only read text and button answers." in done.output
    assert "[menu.dashboard v1]" in done.output  # nothing changed: no new version saved


def test_the_statement_is_a_document_line(png: Path) -> None:
    done = chat("hi\nMy statement\n", "--user", ALICE)
    assert done.exit_code == 0, done.output
    shown = re.search(r"bot> \[document: credex-statement-[0-9-]+\.csv, (\d+) B\]", done.output)
    assert shown is not None, done.output
    assert "     Your Credex statement: 2 settled credexes, newest first." in done.output


def test_a_missing_file_is_one_line_and_the_chat_goes_on(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    done = chat(f"hi\n/send {missing} hello\nMy ledger\n", "--user", ALICE)
    assert done.exit_code == 0, done.output
    said = [line for line in done.output.splitlines() if "nope.png" in line]
    assert said == [f"you> error: /send: no such file: {missing}"]  # after the prompt it ended
    assert "Traceback" not in done.output
    assert "[account.ledger v2]" in done.output  # the next message was answered


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("/location 95,31", "error: /location: the latitude is within ±90, the longitude ±180"),
        ("/location Harare", "error: use: /location LAT,LONG [name]"),
        ("/location", "error: use: /location LAT,LONG [name]"),
        ("/send", "error: use: /send PATH [caption]"),
        ('/send "unclosed.png', "error: /send: the path's closing \" is missing"),
    ],
)
def test_a_command_typed_wrong_says_how_in_one_line(typed: str, problem: str) -> None:
    done = chat(f"hi\n{typed}\nMy ledger\n", "--user", ALICE)
    assert done.exit_code == 0, done.output
    errors = [line for line in done.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and problem in errors[0], done.output
    assert "[account.ledger v2]" in done.output


def test_a_directory_an_empty_file_and_a_caption_on_audio_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    voice = tmp_path / "note.ogg"
    voice.write_bytes(b"OggS" + bytes(200))
    typed = f"hi\n/send {tmp_path}\n/send {empty}\n/send {voice} listen\n"
    done = chat(typed, "--user", ALICE)
    errors = [line.split("error: ", 1)[1] for line in done.output.splitlines() if "error:" in line]
    assert errors == [
        f"/send: {tmp_path} is not a file",
        f"/send: {empty} is empty",
        "/send: note.ogg is sent as audio, which carries no caption",
    ]


def test_help_lists_the_commands_and_slash_words_still_reach_the_bot() -> None:
    done = chat("/help\nhi\nOffer credex\n/cancel\n", "--user", ALICE)
    assert done.exit_code == 0, done.output
    assert "/help for sending a file or a place" in done.output
    for usage in ("/send PATH [caption]", "/location LAT,LONG [name]", "/help"):
        assert f"  {usage}" in done.output
    assert "Offer cancelled." in done.output  # /cancel is the bot's, not the chat's
