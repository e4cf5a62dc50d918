"""Tokens (PROTOCOL.md §2, §3): the Fernet spec vectors the Rust tests use,
canonical spelling, key rotation, the time checks' boundaries, key errors."""

import base64
import datetime
import json
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from stream_rpc import crypto
from stream_rpc.crypto import CryptoKeyError, Cypher, TokenError, generate_key

SPEC = Path(__file__).resolve().parents[2] / "stream-rpc" / "tests" / "data" / "fernet-spec"


def vectors(name):
    return json.loads((SPEC / name).read_text())


def epoch(text):
    return int(datetime.datetime.fromisoformat(text).timestamp())


def test_the_spec_generate_vectors():
    for case in vectors("generate.json"):
        # The IV is random in use; the vector fixes it (a private helper of
        # `cryptography`, used by this test only).
        token = Fernet(case["secret"])._encrypt_from_parts(
            case["src"].encode(), epoch(case["now"]), bytes(case["iv"])
        )
        assert token.decode() == case["token"]
        plain, stamp = Cypher(case["secret"]).open(token, now=epoch(case["now"]))
        assert plain == case["src"].encode() and stamp == epoch(case["now"])


def test_the_spec_verify_vectors():
    for case in vectors("verify.json"):
        cypher = Cypher(case["secret"], ttl=case["ttl_sec"])
        plain, _ = cypher.open(case["token"].encode(), now=epoch(case["now"]))
        assert plain == case["src"].encode()


def test_the_spec_invalid_vectors():
    for case in vectors("invalid.json"):
        cypher = Cypher(case["secret"], ttl=case["ttl_sec"])
        with pytest.raises(TokenError):
            cypher.open(case["token"].encode(), now=epoch(case["now"]))


def test_only_the_canonical_spelling_opens(key):
    cypher = Cypher(key)
    token = cypher.encrypt(b"hello")
    assert cypher.decrypt(token) == b"hello"
    # 73 bytes end in one character holding 2 bits and "==": flipping one of
    # its 4 unused bits spells the same bytes non-canonically.
    assert token.endswith(b"==")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-3:-2])
    stray = token[:-3] + alphabet[last ^ 1 : (last ^ 1) + 1] + b"=="
    assert base64.urlsafe_b64decode(stray) == base64.urlsafe_b64decode(token)
    for bad in [stray, token.rstrip(b"="), token + b"\n", b" " + token, token[:-2] + b"=A"]:
        with pytest.raises(TokenError, match="malformed"):
            cypher.decrypt(bad)


def test_time_boundaries_are_inclusive_whole_seconds(key):
    cypher = Cypher(key, ttl=300)
    token = cypher.encrypt_at(b"x", 1_000_000)
    assert cypher.open(token, now=1_000_300)[0] == b"x"
    with pytest.raises(TokenError, match="expired"):
        cypher.open(token, now=1_000_301)
    assert cypher.open(token, now=1_000_000 - 60)[0] == b"x"
    with pytest.raises(TokenError, match="from the future"):
        cypher.open(token, now=1_000_000 - 61)


def test_keys_rotate_and_a_foreign_key_is_a_bad_signature():
    old, new = generate_key(), generate_key()
    sealed_by_old = Cypher(old).encrypt(b"x")
    rotated = Cypher(f"{new},{old}")
    assert rotated.decrypt(sealed_by_old) == b"x"
    assert Cypher(new).decrypt(rotated.encrypt(b"y")) == b"y"
    with pytest.raises(TokenError, match="bad signature"):
        Cypher(new).decrypt(sealed_by_old)


@pytest.mark.parametrize("value", [None, "", "  ", "not-a-key", "abc,", generate_key() + ",x"])
def test_a_missing_or_malformed_key_says_how_to_make_one(monkeypatch, value):
    monkeypatch.setattr(crypto, "CRYPTO_KEY", value)
    with pytest.raises(CryptoKeyError, match="python -m stream_rpc.crypto"):
        Cypher()


def test_a_key_set_in_code_is_used(monkeypatch, key):
    monkeypatch.setattr(crypto, "CRYPTO_KEY", key)
    assert Cypher(key).decrypt(Cypher().encrypt(b"z")) == b"z"


def test_keygen_prints_a_key():
    import subprocess
    import sys

    # Every warning an error: `-m` of a module the package had imported
    # warned of it in `sys.modules`.
    run = subprocess.run(
        [sys.executable, "-W", "error", "-m", "stream_rpc.crypto"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CRYPTO_KEY": ""},
    )
    assert run.stderr == ""
    out = run.stdout.strip()
    assert len(out) == 44
    Cypher(out)


def test_the_package_names_are_the_modules_names():
    import stream_rpc
    from stream_rpc import common

    assert stream_rpc.Connector is common.Connector
    assert stream_rpc.generate_key is crypto.generate_key
    assert "Cypher" in dir(stream_rpc)
    with pytest.raises(AttributeError):
        stream_rpc.no_such_name  # noqa: B018
