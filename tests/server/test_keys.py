"""API keys: MaaS's rules, one-time display, no secret in the file, hot add and delete (real SQLite)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from npu_serve.server.keys import (
    MAX_KEYS,
    DuplicateLabel,
    InvalidDescription,
    InvalidLabel,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
    KeyVerifier,
    TooManyKeys,
    default_keys_db_path,
)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "data" / "keys.db"


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "npu_serve.server.keys_cli", "keys", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def public_prefix(secret: str) -> str:
    scheme, key_id, _random = secret.split("-", 2)
    return f"{scheme}-{key_id}"


def raw_bytes(db: Path) -> bytes:
    """The database and any journal beside it, as bytes on disk."""
    out = b""
    for suffix in ("", "-wal", "-journal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


# --- rules -----------------------------------------------------------------------------------------

def test_thirty_keys_then_the_31st_is_refused(db):
    store = KeyStore(db)
    for i in range(MAX_KEYS):
        store.create(f"k{i}", "d")
    with pytest.raises(TooManyKeys, match="at most 30"):
        store.create("one-more", "d")
    assert len(store.list()) == 30
    store.delete("k0")  # deleting makes room again
    store.create("one-more", "d")
    assert len(store.list()) == 30


def test_duplicate_label_refused(db):
    store = KeyStore(db)
    store.create("team_a", "first")
    with pytest.raises(DuplicateLabel, match="team_a"):
        store.create("team_a", "second")
    assert [k.description for k in store.list()] == ["first"]


@pytest.mark.parametrize("label", ["has space", "dot.ted", "slash/", "ümlaut", "中文", "semi;colon", "a\n", ""])
def test_label_characters_and_emptiness(db, label):
    with pytest.raises(InvalidLabel):
        KeyStore(db).create(label, "d")


def test_label_and_description_lengths(db):
    store = KeyStore(db)
    store.create("a" * 100, "b" * 100)  # both limits are inclusive
    store.create("A-z_9", "x")
    with pytest.raises(InvalidLabel, match="1 to 100"):
        store.create("a" * 101, "d")
    with pytest.raises(InvalidLabel, match="1 to 100"):
        store.create("", "d")
    with pytest.raises(InvalidDescription, match="1 to 100"):
        store.create("ok", "")
    with pytest.raises(InvalidDescription, match="1 to 100"):
        store.create("ok", "d" * 101)
    with pytest.raises(InvalidDescription, match="control"):
        store.create("ok", "two\nlines")
    assert sorted(k.label for k in store.list()) == sorted(["a" * 100, "A-z_9"])


def test_description_may_be_any_text_within_100_chars(db):
    store = KeyStore(db)
    store.create("cn", "生产环境的密钥, for prod!")
    assert store.list()[0].description == "生产环境的密钥, for prod!"


def test_no_edit_even_through_sql(db):
    store = KeyStore(db)
    store.create("fixed", "original")
    assert not hasattr(store, "update") and not hasattr(store, "rename")
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="cannot be edited"):
        conn.execute("UPDATE api_keys SET description = 'changed' WHERE label = 'fixed'")
    conn.close()
    assert store.list()[0].description == "original"


def test_delete_unknown_label(db):
    with pytest.raises(KeyNotFound, match="nope"):
        KeyStore(db).delete("nope")


def test_all_errors_are_keystore_errors():
    for cls in (TooManyKeys, DuplicateLabel, InvalidLabel, InvalidDescription, KeyNotFound):
        assert issubclass(cls, KeyStoreError)


# --- secrets -----------------------------------------------------------------------------------------

def test_secret_never_in_database_file(db):
    store = KeyStore(db)
    secrets_ = [store.create(f"k{i}", f"key number {i}") for i in range(5)]
    store.delete("k2")
    data = raw_bytes(db)
    for s in secrets_:
        random_part = s.split("-", 2)[2]
        assert s.encode() not in data
        assert random_part.encode() not in data
        assert random_part[:16].encode() not in data
    # What is there is the label and the public prefix.
    assert b"k1" in data and public_prefix(secrets_[1]).encode() in data


def test_prefix_is_public_part_only(db):
    store = KeyStore(db)
    secret = store.create("p", "d")
    info = store.list()[0]
    scheme, key_id, random_part = secret.split("-", 2)
    assert info.prefix == f"{scheme}-{key_id}"
    assert len(random_part) >= 40  # 32 random bytes, base64
    assert random_part not in info.prefix


def test_created_at_is_utc_iso(db):
    store = KeyStore(db)
    store.create("t", "d")
    created = store.list()[0].created_at
    assert time.strftime("%Y-%m-%dT", time.gmtime()) in created and created.endswith("Z")


def test_db_file_is_private(db):
    KeyStore(db)
    assert db.stat().st_mode & 0o077 == 0


def test_default_path_follows_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NPU_SERVE_DATA", str(tmp_path / "d"))
    assert default_keys_db_path() == tmp_path / "d" / "keys.db"
    monkeypatch.delenv("NPU_SERVE_DATA")
    assert default_keys_db_path() == Path.home() / ".local" / "share" / "npu-serve" / "keys.db"


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_create_shows_secret_once_list_never(db):
    created = run_cli("create", "--label", "ci", "--description", "for CI", "--keys-db", str(db))
    assert created.returncode == 0, created.stderr
    secret = next(line for line in created.stdout.splitlines() if line.startswith("nps-"))
    assert created.stdout.count(secret) == 1
    assert "only time" in created.stdout
    listed = run_cli("list", "--keys-db", str(db))
    assert listed.returncode == 0
    assert "ci" in listed.stdout and "for CI" in listed.stdout
    assert public_prefix(secret) in listed.stdout
    assert secret not in listed.stdout and secret.split("-", 2)[2] not in listed.stdout
    assert secret.encode() not in raw_bytes(db)
    assert KeyVerifier.from_config(str(db), []).verify(secret)


def test_cli_default_path_uses_data_dir(tmp_path):
    env = {"NPU_SERVE_DATA": str(tmp_path / "datadir")}
    assert run_cli("create", "--label", "x", "--description", "y", env_extra=env).returncode == 0
    assert (tmp_path / "datadir" / "keys.db").exists()
    assert "x" in run_cli("list", env_extra=env).stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("create", "--label", "bad label", "--description", "d"), "letters, digits"),
        (("create", "--label", "a" * 101, "--description", "d"), "1 to 100"),
        (("create", "--label", "ok", "--description", ""), "1 to 100"),
        (("create", "--label", "ok", "--description", "d" * 101), "1 to 100"),
        (("delete", "--label", "ghost"), "no key labelled"),
    ],
)
def test_cli_errors_exit_2_with_message(db, args, message):
    result = run_cli(*args, "--keys-db", str(db))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "nps-" not in result.stdout


def test_cli_duplicate_and_delete(db):
    assert run_cli("create", "--label", "dup", "--description", "d", "--keys-db", str(db)).returncode == 0
    again = run_cli("create", "--label", "dup", "--description", "d", "--keys-db", str(db))
    assert again.returncode == 2 and "already exists" in again.stderr
    gone = run_cli("delete", "--label", "dup", "--keys-db", str(db))
    assert gone.returncode == 0
    assert "No API keys" in run_cli("list", "--keys-db", str(db)).stdout


# --- verifier ----------------------------------------------------------------------------------------

def test_auth_off_only_without_any_keys(db):
    assert KeyVerifier.from_config(None, []) is None
    assert KeyVerifier.from_config(None, None) is None
    v = KeyVerifier.from_config(None, ["direct-key"])
    assert v.verify("direct-key") and not v.verify("direct-kez") and not v.verify("") and not v.verify(None)
    with pytest.raises(KeyStoreError):
        KeyVerifier.from_config(None, [""])
    empty = KeyVerifier.from_config(str(db), [])  # a keys file with no keys: on, and nothing gets in
    assert empty is not None and not empty.verify("anything")


def test_verifier_combines_db_and_direct_keys(db):
    secret = KeyStore(db).create("db-key", "d")
    v = KeyVerifier.from_config(str(db), ["cli-key"])
    assert v.verify(secret) and v.verify("cli-key")
    assert not v.verify(secret[:-1]) and not v.verify(secret + "x") and not v.verify(secret.upper())
    assert not v.verify(public_prefix(secret))  # the public prefix is not a key


def poll(predicate, timeout: float = 1.0) -> float:
    """Seconds until predicate() held; fails the test if it doesn't within timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"not within {timeout}s")


def test_hot_add_and_delete_within_a_second(db):
    store = KeyStore(db)
    first = store.create("first", "d")
    v = KeyVerifier.from_config(str(db), [])
    assert v.verify(first)
    # Changes from another process (the CLI), as in production.
    created = run_cli("create", "--label", "hot", "--description", "d", "--keys-db", str(db))
    hot = next(line for line in created.stdout.splitlines() if line.startswith("nps-"))
    poll(lambda: v.verify(hot))
    assert run_cli("delete", "--label", "hot", "--keys-db", str(db)).returncode == 0
    poll(lambda: not v.verify(hot))
    assert v.verify(first)
    # Back-to-back changes inside one coarse mtime tick are still seen (file change counter).
    a = store.create("a", "d")
    store.delete("a")
    b = store.create("b", "d")
    poll(lambda: v.verify(b))
    assert not v.verify(a)


def test_deleted_file_revokes_db_keys(db):
    secret = KeyStore(db).create("k", "d")
    v = KeyVerifier.from_config(str(db), ["direct"])
    assert v.verify(secret)
    db.unlink()
    poll(lambda: not v.verify(secret))
    assert v.verify("direct")
    assert not db.exists()  # checking never recreates it


def test_verify_compares_against_every_key(db, monkeypatch):
    """No early exit: every digest is compared, whichever one matches."""
    import hmac

    store = KeyStore(db)
    secrets_ = [store.create(f"k{i}", "d") for i in range(10)]
    v = KeyVerifier.from_config(str(db), ["direct"])
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr("npu_serve.server.keys.hmac.compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for presented in (secrets_[0], secrets_[9], "direct", "wrong"):
        calls.clear()
        v.verify(presented)
        assert len(calls) == 11


def test_concurrent_creates_never_exceed_limit(db):
    store = KeyStore(db)
    for i in range(MAX_KEYS - 3):
        store.create(f"pre{i}", "d")
    results = []

    def worker(i):
        try:
            KeyStore(db).create(f"race{i}", "d")
            results.append("ok")
        except TooManyKeys:
            results.append("full")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 3 and results.count("full") == 5
    assert len(store.list()) == MAX_KEYS
