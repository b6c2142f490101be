"""The key hierarchy on disk: user key, delegation, rotation, model keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infernet.node.config import ConfigError, init_home, load_node_key
from infernet.node.identity import (
    ensure_identity,
    ensure_model_key,
    load_authority,
    retired_keys,
    rotate_node_key,
    safe_model_name,
)
from infernet.protocol.delegation import verify_model_delegation


def test_ensure_identity_is_idempotent_and_never_replaces_an_offline_user_key(
        tmp_path: Path) -> None:
    now = int(time.time())
    key, _ = init_home(tmp_path)
    first = ensure_identity(tmp_path, key, now, env={})
    assert first.created_user_key and first.issued_delegation
    again = ensure_identity(tmp_path, key, now, env={})
    assert not again.created_user_key and not again.issued_delegation
    (tmp_path / "keys" / "user.key").unlink()
    offline = ensure_identity(tmp_path, key, now, env={})
    assert not offline.created_user_key and offline.user_pubkey == first.user_pubkey
    assert not (tmp_path / "keys" / "user.key").exists()
    daemon = ensure_identity(tmp_path, key, now, env={}, create_user_key=False)
    assert daemon.warning == "" and load_authority(tmp_path, now).user.hex() == first.user_pubkey


def test_a_new_node_key_without_the_user_key_is_reported(tmp_path: Path) -> None:
    now = int(time.time())
    key, _ = init_home(tmp_path)
    ensure_identity(tmp_path, key, now, env={})
    (tmp_path / "keys" / "user.key").unlink()
    new, _ = init_home(tmp_path, force=True)
    report = ensure_identity(tmp_path, new, now, env={})
    assert "init --user-key FILE" in report.warning
    with pytest.raises(ConfigError, match="does not cover the node key"):
        load_authority(tmp_path, now)


def test_rotation_hands_the_delegation_to_the_new_key(tmp_path: Path) -> None:
    now = int(time.time())
    key, _ = init_home(tmp_path)
    ensure_identity(tmp_path, key, now, env={})
    model = ensure_model_key(tmp_path, key, "gemma3-270m", "sha256:aa", now)
    assert retired_keys(tmp_path) == {}
    rotated = rotate_node_key(tmp_path, now + 5)
    assert rotated.old == key.public_key and load_node_key(tmp_path) == rotated.new
    assert retired_keys(tmp_path) == {key.public_key.hex(): now + 5}  # for the submitter
    authority = load_authority(tmp_path, now + 10)
    assert authority.current_key == rotated.new.public_key
    assert authority.retired == ((key.public_key, now + 5),)
    again = ensure_model_key(tmp_path, rotated.new, "gemma3-270m", "sha256:aa", now + 10)
    assert not again.issued and again.public_key == model.public_key  # re-issued by rotate
    verify_model_delegation(again.delegation, authority=authority, now=now + 10)
    other_weights = ensure_model_key(tmp_path, rotated.new, "gemma3-270m", "sha256:bb", now)
    assert other_weights.issued and other_weights.delegation.record.weights_hash == "sha256:bb"


def test_safe_model_names_never_collide_or_escape() -> None:
    assert safe_model_name("gemma3-270m") == "gemma3-270m"
    names = {safe_model_name(n) for n in ("qwen2.5:7b", "qwen2.5_7b", "a/b", "a_b", "../x", "..")}
    assert len(names) == 6
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_a_renewed_delegation_keeps_the_retired_keys_while_their_grace_lasts(
        tmp_path: Path) -> None:
    now = int(time.time())
    key, _ = init_home(tmp_path)
    ensure_identity(tmp_path, key, now, env={})
    rotated = rotate_node_key(tmp_path, now + 5)
    (tmp_path / "keys" / "delegation.cbor").unlink()  # renewed, as `init --force` does
    renewed = ensure_identity(tmp_path, rotated.new, now + 10, env={})
    assert renewed.issued_delegation
    authority = load_authority(tmp_path, now + 10)
    assert authority.current_key == rotated.new.public_key and authority.retired == ()
    # The old key's receipts are still sent: the coordinator links it to this node.
    assert retired_keys(tmp_path) == {key.public_key.hex(): now + 5}
    # A renewal after the grace forgets it.
    (tmp_path / "keys" / "delegation.cbor").unlink()
    ensure_identity(tmp_path, rotated.new, now + 3 * 86_400, env={})
    assert retired_keys(tmp_path) == {}
    assert not (tmp_path / "keys" / "rotations-earlier.json").exists()
