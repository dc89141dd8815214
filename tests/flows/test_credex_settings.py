"""The reference bot's deployment wiring: CREDEX_* settings, and token keys from a JWKS URL."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from adapters import AsyncMemoryStore
from flows.credex.fake import FakeCredexApi
from flows.credex.fake_server import DEV_CLIENT_KEY, FakeCredexServer, rsa_key, serving
from flows.credex.settings import CredexSettings, CredexSettingsError, engine_from_env
from fsm.blocking import BlockingEngine
from fsm.errors import TokenRefused
from tests.flows.conftest import ALICE

KEY = rsa_key()


@pytest.fixture(scope="module")
def rs256() -> Iterator[FakeCredexServer]:
    """The fake signing RS256 tokens with a ``kid``, its public key served as a JWKS."""
    with serving(FakeCredexApi(private_key=KEY, key_id="k-1")) as server:
        yield server


def env(server: FakeCredexServer, **extra: str) -> dict[str, str]:
    base = {
        "CREDEX_API_URL": server.url,
        "CREDEX_CLIENT_API_KEY": DEV_CLIENT_KEY,
        "CREDEX_JWKS_URL": f"{server.url}/.well-known/jwks.json",
    }
    return {**base, **extra}


def test_no_url_means_the_in_memory_fake() -> None:
    assert CredexSettings.from_env({}) is None


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"CREDEX_API_URL": "credex.example"}, "CREDEX_API_URL must be an http"),
        ({"CREDEX_API_URL": "https://x"}, "missing setting: CREDEX_CLIENT_API_KEY"),
        (
            {"CREDEX_API_URL": "https://x", "CREDEX_CLIENT_API_KEY": "c"},
            "exactly one of CREDEX_JWT_KEY and CREDEX_JWKS_URL",
        ),
        (
            {
                "CREDEX_API_URL": "https://x",
                "CREDEX_CLIENT_API_KEY": "c",
                "CREDEX_JWT_KEY": "s3cret-value",
                "CREDEX_JWKS_URL": "https://x/jwks",
            },
            "exactly one of",
        ),
        (
            {
                "CREDEX_API_URL": "https://x",
                "CREDEX_CLIENT_API_KEY": "c",
                "CREDEX_JWT_KEY": "s3cret-value",
                "CREDEX_TIMEOUT": "soon",
            },
            "CREDEX_TIMEOUT must be a number",
        ),
    ],
)
def test_a_bad_setting_is_named_without_its_value(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(CredexSettingsError, match=problem) as caught:
        CredexSettings.from_env(settings)
    assert "s3cret-value" not in str(caught.value)


def test_a_shared_key_verifies_hs256_and_its_repr_hides_it() -> None:
    settings = CredexSettings.from_env(
        {"CREDEX_API_URL": "https://x", "CREDEX_CLIENT_API_KEY": "c", "CREDEX_JWT_KEY": "k" * 32}
    )
    assert settings is not None and settings.algorithms == ("HS256",)
    assert "k" * 32 not in repr(settings) and "'c'" not in repr(settings)
    token = jwt.encode({"sub": "m", "exp": 4_000_000_000}, "k" * 32, algorithm="HS256")
    assert settings.verifier().verify(token).subject == "m"


def test_a_pem_public_key_verifies_rs256() -> None:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    escaped = pem.decode().replace("\n", "\\n")  # as an .env file carries it
    settings = CredexSettings.from_env(
        {"CREDEX_API_URL": "https://x", "CREDEX_CLIENT_API_KEY": "c", "CREDEX_JWT_KEY": escaped}
    )
    assert settings is not None and settings.algorithms == ("RS256",)
    token = jwt.encode({"sub": "m", "exp": 4_000_000_000}, KEY, algorithm="RS256")
    assert settings.verifier().verify(token).subject == "m"


def test_jwks_keys_verify_the_apis_tokens_and_refuse_others(rs256: FakeCredexServer) -> None:
    settings = CredexSettings.from_env(env(rs256))
    assert settings is not None and settings.algorithms == ("RS256",)
    verifier = settings.verifier()
    token = rs256.api.login(ALICE).token
    assert verifier.verify(token).subject == "mem-0001"
    stranger = jwt.encode(
        {"sub": "x", "exp": 4_000_000_000}, rsa_key(), algorithm="RS256", headers={"kid": "k-2"}
    )
    with pytest.raises(TokenRefused, match="no signing key"):
        verifier.verify(stranger)
    forged = jwt.encode(
        {"sub": "x", "exp": 4_000_000_000}, rsa_key(), algorithm="RS256", headers={"kid": "k-1"}
    )
    with pytest.raises(TokenRefused, match="bad signature"):
        verifier.verify(forged)


def test_an_unreachable_jwks_refuses_the_token() -> None:
    with serving() as gone:
        url = gone.url
    settings = CredexSettings.from_env(
        {"CREDEX_API_URL": url, "CREDEX_CLIENT_API_KEY": "c", "CREDEX_JWKS_URL": f"{url}/jwks"}
    )
    assert settings is not None
    token = jwt.encode({"sub": "m", "exp": 4_000_000_000}, KEY, algorithm="RS256")
    with pytest.raises(TokenRefused, match="no signing key"):
        settings.verifier().verify(token)


def test_engine_from_env_talks_to_the_api_over_http(rs256: FakeCredexServer) -> None:
    before = len(rs256.seen("login"))
    engine = BlockingEngine(engine_from_env(AsyncMemoryStore(), env(rs256)))
    result = engine.handle(ALICE, "hi")
    assert result.snapshot.stage == "menu" and "Welcome Alice" in result.texts[0]
    assert len(rs256.seen("login")) == before + 1


def test_engine_from_env_without_a_url_uses_the_fake(caplog: pytest.LogCaptureFixture) -> None:
    engine = BlockingEngine(engine_from_env(AsyncMemoryStore(), {}))
    assert engine.handle(ALICE, "hi").snapshot.stage == "menu"
    assert "in-memory fake Credex API" in caplog.text
