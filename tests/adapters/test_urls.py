"""One store URL, one store (``FSM_STORE`` / ``--store`` everywhere): Redis, SQLite and
PostgreSQL URLs open their stores; anything else is refused with the schemes listed; and a
conversation kept in a SQLite file survives from one ``fsm chat`` run to the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import AsyncSQLiteStore, RedisStore, SQLiteStore
from adapters.urls import open_async_store, open_store, store_kind

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:1/0", "redis"),
        ("rediss://h:1/0", "redis"),
        ("unix:///run/r.sock", "redis"),
        ("redis+cluster://h:1,h:2", "redis"),
        ("redis+sentinel://h:1/svc", "redis"),
        ("sqlite:///bot.db", "sqlite"),
        ("postgresql://u@h/db", "postgres"),
        ("postgres://u@h/db", "postgres"),
    ],
)
def test_each_scheme_names_its_store(url: str, kind: str) -> None:
    assert store_kind(url) == kind


@pytest.mark.parametrize("url", ["memory", "mysql://h/db", "http://h", "bot.db", ""])
def test_another_url_is_refused_with_the_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        store_kind(url)


def test_urls_open_their_stores(tmp_path: Path) -> None:
    sqlite = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(sqlite, SQLiteStore)
    sqlite.close()
    assert isinstance(open_async_store(f"sqlite:///{tmp_path}/b.db"), AsyncSQLiteStore)
    redis = open_store("redis://127.0.0.1:1/0", namespace="bot-a")
    assert isinstance(redis, RedisStore) and redis.layout.namespace == "bot-a"
    redis.close()


def chat(db: Path, *lines: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    script = db.with_suffix(f".{len(lines)}.txt")
    script.write_text("! user 263770000001\n" + "\n".join(f"> {line}" for line in lines) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "fsm.cli", "chat", "--store", f"sqlite:///{db}", "--script",
         str(script)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_fsm_chat_keeps_a_conversation_across_runs_in_a_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    first = chat(db, "hi", "1")
    assert "How much do you want to offer?" in first
    second = chat(db, "25")  # a new process: the conversation is where the first left it
    assert "Who should receive 25.00 USD?" in second
