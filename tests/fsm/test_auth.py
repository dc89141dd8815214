"""Token verification with really signed JWTs (HS256, RS256, ES256)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fsm import FakeClock, TokenVerifier
from fsm.errors import TokenRefused
from tests.fsm.sample_flows import SECRET, issue_token


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_token_gives_claims(clock: FakeClock) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    claims = verifier.verify(issue_token(clock, sub="ann", ttl=60))
    assert claims.subject == "ann"
    assert claims.expires_at == int(clock.now() + 60)


def test_tampered_payload_is_refused(clock: FakeClock) -> None:
    header, _, sig = issue_token(clock, sub="ann").split(".")
    forged = ".".join([header, _b64({"sub": "admin", "exp": clock.now() + 999}), sig])
    with pytest.raises(TokenRefused, match="bad signature"):
        TokenVerifier(SECRET, clock=clock).verify(forged)


def test_alg_none_is_refused(clock: FakeClock) -> None:
    unsigned = jwt.encode({"sub": "ann", "exp": clock.now() + 60}, None, algorithm="none")
    with pytest.raises(TokenRefused, match="algorithm not allowed"):
        TokenVerifier(SECRET, clock=clock).verify(unsigned)
    with pytest.raises(ValueError):
        TokenVerifier(SECRET, algorithms=("none",))


def test_wrong_key_is_refused(clock: FakeClock) -> None:
    token = issue_token(clock, key=b"another-secret-also-32-bytes-long")
    with pytest.raises(TokenRefused, match="bad signature"):
        TokenVerifier(SECRET, clock=clock).verify(token)


def test_expired_token_is_refused_after_leeway(clock: FakeClock) -> None:
    verifier = TokenVerifier(SECRET, clock=clock, leeway=5)
    token = issue_token(clock, ttl=60)
    clock.advance(64)
    assert verifier.verify(token).subject == "u1"  # within leeway
    clock.advance(2)
    with pytest.raises(TokenRefused, match="expired"):
        verifier.verify(token)


def test_cached_claims_still_expire(clock: FakeClock) -> None:
    verifier = TokenVerifier(SECRET, clock=clock, leeway=0)
    token = issue_token(clock, ttl=60)
    for _ in range(100):
        verifier.verify(token)
    assert verifier.verifications == 1  # verified once, then served from the cache
    clock.advance(61)
    with pytest.raises(TokenRefused, match="expired"):
        verifier.verify(token)


def test_cache_is_bounded(clock: FakeClock) -> None:
    verifier = TokenVerifier(SECRET, clock=clock, cache_size=10)
    for n in range(50):
        verifier.verify(issue_token(clock, sub=f"u{n}"))
    assert len(verifier._cache) == 10


def test_missing_exp_is_refused(clock: FakeClock) -> None:
    token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    with pytest.raises(TokenRefused, match="missing claim 'exp'"):
        TokenVerifier(SECRET, clock=clock).verify(token)


def test_garbage_is_refused(clock: FakeClock) -> None:
    for junk in ["", "a.b.c", "not a token"]:
        with pytest.raises(TokenRefused):
            TokenVerifier(SECRET, clock=clock).verify(junk)


def test_rs256_and_es256_with_public_keys(clock: FakeClock) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {"sub": "ann", "exp": int(clock.now() + 60)}
    rs = jwt.encode(claims, rsa_key, algorithm="RS256")
    es = jwt.encode(claims, ec_key, algorithm="ES256")
    assert TokenVerifier(rsa_key.public_key(), algorithms=("RS256",), clock=clock).verify(rs)
    assert TokenVerifier(ec_key.public_key(), algorithms=("ES256",), clock=clock).verify(es)
    # A token signed with another algorithm than the allow-list is refused.
    with pytest.raises(TokenRefused, match="algorithm not allowed"):
        TokenVerifier(ec_key.public_key(), algorithms=("ES256",), clock=clock).verify(rs)


def test_hs_and_rs_cannot_be_mixed() -> None:
    with pytest.raises(ValueError, match="mix"):
        TokenVerifier(SECRET, algorithms=("HS256", "RS256"))


def test_refusal_never_contains_the_token(clock: FakeClock) -> None:
    token = issue_token(clock, ttl=1)
    clock.advance(100)
    with pytest.raises(TokenRefused) as info:
        TokenVerifier(SECRET, clock=clock, leeway=0).verify(token)
    assert token not in str(info.value) and token not in repr(info.value)


def test_replacement_refuses_older_or_unprovable_tokens(clock: FakeClock) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    held = verifier.auth_for(issue_token(clock, ttl=600))
    same_second_shorter = issue_token(clock, ttl=300)
    with pytest.raises(TokenRefused, match="stale"):
        verifier.replacement(held, same_second_shorter)
    no_iat = jwt.encode({"sub": "u1", "exp": int(clock.now() + 900)}, SECRET, algorithm="HS256")
    with pytest.raises(TokenRefused, match="no iat"):
        verifier.replacement(held, no_iat)
    clock.advance(1)
    newer = issue_token(clock, ttl=600)
    assert verifier.replacement(held, newer).token == newer
    assert verifier.replacement(None, no_iat).token == no_iat  # nothing held: any valid token
