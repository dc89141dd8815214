"""What a message may carry: user keys, texts and message ids every store can keep.

The engines check these before any store call, so every store gives the same answer: none sees
a key that another would refuse.
"""

from __future__ import annotations

from fsm.errors import InvalidUserKey

#: The longest user key (in characters) a conversation can have.
MAX_USER_KEY = 256


def check_key(user_key: str) -> str:
    """``user_key`` if it can name a conversation, else :class:`InvalidUserKey` (the same
    answer on every store: none sees a key that another would refuse)."""
    if not isinstance(user_key, str):
        raise InvalidUserKey(f"must be str, got {type(user_key).__name__}")
    if not user_key or not user_key.strip():
        raise InvalidUserKey("must not be empty")
    if len(user_key) > MAX_USER_KEY:
        raise InvalidUserKey(f"longer than {MAX_USER_KEY} characters")
    if "\x00" in user_key:
        raise InvalidUserKey("must not contain NUL")
    if not _is_unicode(user_key):
        raise InvalidUserKey("must be valid Unicode text (it holds a lone surrogate)")
    return user_key


def check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not _is_unicode(text):
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)")


def check_message_id(message_id: str | None) -> None:
    if message_id is None:
        return
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("message_id must be a non-empty string or None")
    if not _is_unicode(message_id):
        raise ValueError("message_id must be valid Unicode (it holds a lone surrogate)")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates, which no store can keep)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
