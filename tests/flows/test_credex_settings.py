"""The reference bot's deployment wiring: CREDEX_* settings, and token keys from a JWKS URL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from adapters import AsyncMemoryStore
from flows.credex.fake import FakeCredexApi
from flows.credex.fake_server import DEV_CLIENT_KEY, FakeCredexServer, rsa_key, serving
from flows.credex.settings import CredexSettings, CredexSettingsError, JwksKeys, engine_from_env
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


def test_an_unreachable_jwks_stops_startup() -> None:
    with serving() as gone:
        url = gone.url
    settings = CredexSettings.from_env(
        {"CREDEX_API_URL": url, "CREDEX_CLIENT_API_KEY": "c", "CREDEX_JWKS_URL": f"{url}/jwks"}
    )
    assert settings is not None
    with pytest.raises(CredexSettingsError, match="CREDEX_JWKS_URL: no usable key for RS256"):
        settings.verifier()


@pytest.mark.parametrize(
    ("key", "algorithms", "problem"),
    [
        ("-----BEGIN PUBLIC KEY-----\\nnot a key\\n-----END PUBLIC KEY-----", "", "no usable key"),
        ("a-shared-secret-of-32-bytes-or-more!", "rs256", "unknown rs256"),
        ("a-shared-secret-of-32-bytes-or-more!", "RS256", "no usable key for RS256"),
    ],
)
def test_a_key_that_cannot_verify_stops_startup(key: str, algorithms: str, problem: str) -> None:
    """Not every member refused later: the settings fail when the engine is built."""
    environ = {"CREDEX_API_URL": "https://x", "CREDEX_CLIENT_API_KEY": "c", "CREDEX_JWT_KEY": key}
    if algorithms:
        environ["CREDEX_JWT_ALGORITHMS"] = algorithms
    settings = CredexSettings.from_env(environ)
    assert settings is not None
    with pytest.raises(CredexSettingsError, match=problem) as caught:
        settings.verifier()
    assert key not in str(caught.value)


@pytest.mark.parametrize("name", ["CREDEX_API_URL", "CREDEX_JWKS_URL"])
def test_plain_http_is_for_loopback_only(name: str) -> None:
    environ = {
        "CREDEX_API_URL": "https://api.example",
        "CREDEX_CLIENT_API_KEY": "c",
        "CREDEX_JWKS_URL": "https://api.example/jwks",
        name: "http://api.example/x",
    }
    with pytest.raises(CredexSettingsError, match=f"{name} must be https"):
        CredexSettings.from_env(environ)
    environ[name] = "http://127.0.0.1:8600/x"
    assert CredexSettings.from_env(environ) is not None


def test_jwks_keys_answer_from_memory_and_refetch_only_for_a_new_kid(
    rs256: FakeCredexServer,
) -> None:
    url = f"{rs256.url}/.well-known/jwks.json"
    keys = JwksKeys(url, cooldown=60)
    keys.refresh()
    token = rs256.api.login(ALICE).token
    before = len(rs256.jwks_requests)
    for _ in range(5):
        keys(token)
    assert len(rs256.jwks_requests) == before  # no fetch per token
    stranger = jwt.encode({"sub": "x"}, rsa_key(), algorithm="RS256", headers={"kid": "k-9"})
    with pytest.raises(jwt.InvalidTokenError, match="unknown key id"):
        keys(stranger)  # within the cooldown: refused without a fetch
    assert len(rs256.jwks_requests) == before
    eager = JwksKeys(url, cooldown=0)
    eager.refresh()
    with pytest.raises(jwt.InvalidTokenError, match="unknown key id"):
        eager(stranger)  # a rotation is fetched once, then the kid is still unknown
    assert len(rs256.jwks_requests) == before + 2
    stale = JwksKeys(url, lifespan=0)
    stale.refresh()
    fetched = len(rs256.jwks_requests)
    assert stale(token) is not None  # answered from memory at once...
    deadline = time.monotonic() + 5
    while len(rs256.jwks_requests) == fetched and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rs256.jwks_requests) == fetched + 1  # ...and refetched in the background


def test_engine_from_env_talks_to_the_api_over_http(rs256: FakeCredexServer) -> None:
    before = len(rs256.seen("login"))
    built = engine_from_env(AsyncMemoryStore(), env(rs256))
    try:
        result = BlockingEngine(built).handle(ALICE, "hi")
    finally:
        built.flow.close()  # type: ignore[attr-defined]
    assert result.snapshot.stage == "menu" and "Welcome Alice" in result.texts[0]
    assert len(rs256.seen("login")) == before + 1


def test_engine_from_env_without_a_url_uses_the_fake(caplog: pytest.LogCaptureFixture) -> None:
    engine = BlockingEngine(engine_from_env(AsyncMemoryStore(), {}))
    assert engine.handle(ALICE, "hi").snapshot.stage == "menu"
    assert "in-memory fake Credex API" in caplog.text
