"""Tests for infernet.protocol.auth (X-Infernet-Auth) and infernet.protocol.replay."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.auth import (
    AUTH_HEADER,
    AuthBusyError,
    AuthError,
    AuthExpiredError,
    AuthFutureError,
    AuthHeader,
    AuthMalformedError,
    AuthReplayError,
    AuthSignatureError,
    AuthUnknownKeyError,
    AuthVerifier,
    auth_digest,
    body_sha256,
    parse_auth_header,
    sign_request,
)
from infernet.protocol.errors import InfernetError, LocalProtocolError, SignatureError
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.replay import ReplayCache, ReplayCacheFull

KEY = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
NODE_ID = KEY.public_key.hex()
NOW = 1_800_000_000
BODY = b'{"node_id":"x","load":0.25}'


def lookup(key_id: str) -> PublicKey | None:
    return KEY.public_key if key_id == NODE_ID else None


def header(*, nonce: bytes = b"\x01" * 16, timestamp: int = NOW, method: str = "POST",
           target: str = "/api/v1/heartbeat", body: bytes = BODY,
           key: SecretKey = KEY) -> str:
    return sign_request(key, method=method, target=target, body=body, nonce=nonce,
                        timestamp=timestamp, aux=bytes(32))


def verify(verifier: AuthVerifier, value: str | None, **kw: object) -> PublicKey:
    args: dict[str, object] = {"key_id": NODE_ID, "method": "POST",
                               "target": "/api/v1/heartbeat", "body": BODY, "now": NOW}
    args.update(kw)
    return verifier.verify(value, **args)  # type: ignore[arg-type]


# --- format ------------------------------------------------------------------------------


def test_header_layout_and_signed_message() -> None:
    value = header()
    version, sig, nonce, timestamp = value.split(".")
    assert (version, nonce, timestamp) == ("v1", "01" * 16, str(NOW))
    assert len(sig) == 128 and sig == sig.lower()
    text = f"POST\n/api/v1/heartbeat\n{hashlib.sha256(BODY).hexdigest()}\n{nonce}\n{NOW}"
    digest = hashlib.sha256(text.encode()).digest()
    assert digest == auth_digest("POST", "/api/v1/heartbeat", BODY, nonce, NOW)
    assert KEY.public_key.verify(bytes.fromhex(sig), digest)
    assert AUTH_HEADER == "X-Infernet-Auth"


def test_empty_body_hashes_as_sha256_of_nothing() -> None:
    assert body_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_parse_round_trips() -> None:
    parsed = parse_auth_header(header())
    assert isinstance(parsed, AuthHeader)
    assert str(parsed) == header()


def test_sign_refuses_bad_input() -> None:
    for bad in [{"method": "post"}, {"target": "api/v1"}, {"target": "/a b"},
                {"target": "/a\nb"}, {"nonce": b"\x00" * 15}, {"timestamp": -1}]:
        with pytest.raises(LocalProtocolError):
            header(**bad)  # type: ignore[arg-type]


GOOD = header()
MALFORMED = [
    None,
    "",
    "v1",
    GOOD.replace("v1.", "v2.", 1),
    GOOD + ".x",
    GOOD.replace(".", ":"),
    GOOD.upper(),
    GOOD.split(".")[0] + "." + GOOD.split(".")[1][:-2] + "." + "01" * 16 + f".{NOW}",
    GOOD.rsplit(".", 1)[0] + ".0" + str(NOW),  # leading zero
    GOOD.rsplit(".", 1)[0] + ".-1",
    GOOD.rsplit(".", 1)[0] + ".1e9",
    GOOD.rsplit(".", 1)[0] + ". 1800000000",
    GOOD.rsplit(".", 1)[0] + ".1800000000\n",
    GOOD.rsplit(".", 1)[0] + ".１８００",  # full-width digits
    GOOD.rsplit(".", 2)[0] + ".0101." + str(NOW),  # short nonce
    "v1." + "zz" * 64 + "." + "01" * 16 + f".{NOW}",
    GOOD + "0" * 300,
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_headers(value: str | None) -> None:
    with pytest.raises(AuthMalformedError):
        verify(AuthVerifier(lookup), value)


# --- verification ------------------------------------------------------------------------


def test_valid_request_verifies_and_returns_the_key() -> None:
    verifier = AuthVerifier(lookup)
    assert verify(verifier, header()) == KEY.public_key
    assert verifier.statistics().entries == 1


def test_window_is_inclusive_of_30_seconds_either_way() -> None:
    verifier = AuthVerifier(lookup)
    verify(verifier, header(nonce=b"\x02" * 16, timestamp=NOW - 30))
    verify(verifier, header(nonce=b"\x03" * 16, timestamp=NOW + 30))
    with pytest.raises(AuthExpiredError):
        verify(verifier, header(nonce=b"\x04" * 16, timestamp=NOW - 31))
    with pytest.raises(AuthFutureError):
        verify(verifier, header(nonce=b"\x05" * 16, timestamp=NOW + 31))


def test_replay_is_refused_but_another_nonce_passes() -> None:
    verifier = AuthVerifier(lookup)
    verify(verifier, header())
    with pytest.raises(AuthReplayError):
        verify(verifier, header())
    with pytest.raises(AuthReplayError):
        verify(verifier, header(), now=NOW + 29)
    verify(verifier, header(nonce=b"\x09" * 16))


def test_replay_after_the_window_is_expired_not_replayed() -> None:
    verifier = AuthVerifier(lookup)
    verify(verifier, header())
    with pytest.raises(AuthExpiredError):
        verify(verifier, header(), now=NOW + 301)


def test_same_nonce_from_two_keys_is_not_a_replay() -> None:
    other = SecretKey.generate()
    keys = {NODE_ID: KEY.public_key, other.public_key.hex(): other.public_key}
    verifier = AuthVerifier(keys.get)
    verify(verifier, header())
    verify(verifier, header(key=other), key_id=other.public_key.hex())


def test_unknown_key() -> None:
    with pytest.raises(AuthUnknownKeyError):
        verify(AuthVerifier(lookup), header(), key_id="ab" * 32)


@pytest.mark.parametrize(
    "change",
    [{"method": "PUT"}, {"target": "/api/v1/jobs"}, {"target": "/api/v1/heartbeat?x=1"},
     {"body": BODY + b" "}, {"body": b""}],
    ids=["method", "path", "query", "body", "empty body"],
)
def test_signature_binds_method_target_and_body(change: dict[str, object]) -> None:
    with pytest.raises(AuthSignatureError):
        verify(AuthVerifier(lookup), header(), **change)


def test_signature_by_another_key_is_bad_signature() -> None:
    forged = header(key=SecretKey.generate())
    with pytest.raises(AuthSignatureError) as info:
        verify(AuthVerifier(lookup), forged)
    assert isinstance(info.value, SignatureError)


def test_forged_requests_do_not_fill_the_nonce_cache() -> None:
    verifier = AuthVerifier(lookup, max_nonces=2)
    for i in range(10):
        with pytest.raises(AuthSignatureError):
            verify(verifier, header(nonce=bytes([i]) * 16, key=SecretKey.generate()))
    assert verifier.statistics().entries == 0


def test_full_cache_fails_closed_then_recovers() -> None:
    verifier = AuthVerifier(lookup, max_nonces=2)
    verify(verifier, header(nonce=b"\x01" * 16))
    verify(verifier, header(nonce=b"\x02" * 16))
    with pytest.raises(AuthBusyError) as info:
        verify(verifier, header(nonce=b"\x03" * 16))
    assert info.value.code == "rate_limited"
    # 31 s later both cached requests are stale (their timestamps would be refused): the
    # cache may forget them, and a fresh request is admitted.
    verify(verifier, header(nonce=b"\x03" * 16, timestamp=NOW + 31), now=NOW + 31)
    assert verifier.statistics().refused == 1


def test_every_error_is_unauthorized_except_busy() -> None:
    for cls in (AuthMalformedError, AuthExpiredError, AuthFutureError, AuthReplayError,
                AuthSignatureError, AuthUnknownKeyError):
        assert issubclass(cls, AuthError) and issubclass(cls, InfernetError)
        assert cls().code == "unauthorized"
    assert AuthBusyError().code == "rate_limited"
    names = {c.__name__ for c in (AuthMalformedError, AuthExpiredError, AuthFutureError,
                                  AuthReplayError, AuthSignatureError, AuthUnknownKeyError)}
    assert len(names) == 6


# --- properties --------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, database=None)
@given(st.integers(0, len(GOOD) - 1), st.characters(codec="utf-8"))
def test_any_single_character_mutation_is_rejected(pos: int, char: str) -> None:
    mutated = GOOD[:pos] + char + GOOD[pos + 1 :]
    if mutated == GOOD:
        return
    with pytest.raises(AuthError):
        verify(AuthVerifier(lookup), mutated)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=300))
def test_arbitrary_header_text_raises_only_auth_errors(value: str) -> None:
    with contextlib.suppress(AuthError):
        verify(AuthVerifier(lookup), value)


@settings(max_examples=100, deadline=None, database=None)
@given(st.sampled_from(["GET", "POST", "DELETE"]), st.from_regex(r"/[a-z0-9/?=&%]{0,40}",
       fullmatch=True), st.binary(max_size=200), st.binary(min_size=16, max_size=16),
       st.integers(NOW - 30, NOW + 30))
def test_sign_then_verify_round_trip(method: str, target: str, body: bytes, nonce: bytes,
                                     timestamp: int) -> None:
    value = sign_request(KEY, method=method, target=target, body=body, nonce=nonce,
                         timestamp=timestamp)
    assert verify(AuthVerifier(lookup), value, method=method, target=target,
                  body=body) == KEY.public_key


# --- replay cache ------------------------------------------------------------------------


def test_replay_cache_expiry_and_bounds() -> None:
    cache = ReplayCache(ttl=300, max_entries=3)
    cache.add("a", now=0, stale_at=30)
    assert cache.seen("a", 299) and not cache.seen("a", 300)
    assert len(cache) == 0  # pruned on the way
    for key in "bcd":
        cache.add(key, now=10, stale_at=40)
    with pytest.raises(ReplayCacheFull):
        cache.add("e", now=20, stale_at=50)
    cache.add("e", now=41, stale_at=71)  # b, c, d are stale at 41: forgotten
    assert len(cache) == 1 and cache.seen("e", 41)
    stats = cache.statistics()
    assert (stats.entries, stats.max_entries, stats.refused) == (1, 3, 1)


def test_replay_cache_rejects_bad_config() -> None:
    with pytest.raises(InfernetError):
        ReplayCache(ttl=0, max_entries=1)
    with pytest.raises(InfernetError):
        ReplayCache(ttl=1, max_entries=0)
