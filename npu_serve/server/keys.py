"""API keys, as MaaS manages them: an SQLite file that holds only SHA-256 digests of the secrets.

A secret looks like ``nps-<id>-<secret>``: ``<id>`` is 8 random hex characters that are *public*
(stored and shown as the key's prefix, ``nps-<id>``, so a person can tell keys apart), and
``<secret>`` is 32 random bytes (urlsafe base64). The store keeps the SHA-256 hex digest of the whole
string, never the string; the prefix alone carries none of the secret's entropy.

MaaS's rules, each its own exception (all ``KeyStoreError``): at most 30 keys; labels unique, made
of letters, digits, ``_`` and ``-``, 1 to 100 characters; descriptions 1 to 100 characters; no edit
operation exists (a trigger also refuses UPDATE on the table, so other tools can't edit either).

``KeyVerifier`` is what the auth middleware asks. It re-reads the digests when the file changes
(checked at most every ``RELOAD_INTERVAL_S``), so keys created or deleted while the server runs take
effect within a second, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from npu_serve.errors import NpuServeError

logger = logging.getLogger(__name__)

MAX_KEYS = 30
MAX_LABEL_LEN = 100
MAX_DESCRIPTION_LEN = 100
KEY_SCHEME = "nps"
RELOAD_INTERVAL_S = 0.5
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    label       TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    prefix      TEXT NOT NULL UNIQUE,
    digest      TEXT NOT NULL UNIQUE
);
CREATE TRIGGER IF NOT EXISTS api_keys_no_update BEFORE UPDATE ON api_keys
BEGIN SELECT RAISE(ABORT, 'API keys cannot be edited; create a new key and delete the old one'); END;
PRAGMA user_version = 1;
"""


class KeyStoreError(NpuServeError):
    """A key operation broke a rule; the message says which, in words a person can act on."""


class TooManyKeys(KeyStoreError):
    pass


class DuplicateLabel(KeyStoreError):
    pass


class InvalidLabel(KeyStoreError):
    pass


class InvalidDescription(KeyStoreError):
    pass


class KeyNotFound(KeyStoreError):
    pass


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: everything but the secret."""

    label: str
    description: str
    created_at: str  # ISO 8601, UTC, seconds
    prefix: str  # "nps-<id>": public, tells keys apart


def default_keys_db_path() -> Path:
    """``$NPU_SERVE_DATA/keys.db``, else ``~/.local/share/npu-serve/keys.db``."""
    data_dir = os.environ.get("NPU_SERVE_DATA") or os.path.join("~", ".local", "share", "npu-serve")
    return Path(data_dir).expanduser() / "keys.db"


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def validate_label(label: str) -> None:
    if not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL_LEN:
        n = len(label) if isinstance(label, str) else 0
        raise InvalidLabel(f"label must be 1 to {MAX_LABEL_LEN} characters (got {n})")
    if not _LABEL_RE.fullmatch(label):
        raise InvalidLabel(f"label {label!r} may contain only letters, digits, '_' and '-'")


def validate_description(description: str) -> None:
    if not isinstance(description, str) or not 1 <= len(description) <= MAX_DESCRIPTION_LEN:
        n = len(description) if isinstance(description, str) else 0
        raise InvalidDescription(f"description must be 1 to {MAX_DESCRIPTION_LEN} characters (got {n})")
    # A newline or other control character would garble `keys list`; MaaS's console can't enter one.
    if any(ord(c) < 32 or ord(c) == 127 for c in description):
        raise InvalidDescription("description must not contain control characters (newlines, tabs, ...)")


class KeyStore:
    """The keys file. Each call opens its own short connection: the CLI and a running server's
    verifier use the same file from different processes, and nothing is held open between calls."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Only digests live here, but there is no reason for other users to read them.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> _Connection:
        return _Connection(self.path)

    def create(self, label: str, description: str) -> str:
        """Adds a key and returns its secret. This is the only time the secret exists outside the
        caller's hands: the store keeps its digest."""
        validate_label(label)
        validate_description(description)
        key_id = secrets.token_hex(4)
        secret = f"{KEY_SCHEME}-{key_id}-{secrets.token_urlsafe(32)}"
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._connect() as conn:
            # IMMEDIATE takes the write lock before counting, so two concurrent creates can't both
            # see 29 keys and end with 31.
            conn.execute("BEGIN IMMEDIATE")
            (count,) = conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()
            if count >= MAX_KEYS:
                raise TooManyKeys(f"at most {MAX_KEYS} API keys may exist; delete one first")
            if conn.execute("SELECT 1 FROM api_keys WHERE label = ?", (label,)).fetchone():
                raise DuplicateLabel(f"a key labelled {label!r} already exists; labels must be unique")
            conn.execute(
                "INSERT INTO api_keys (label, description, created_at, prefix, digest) VALUES (?, ?, ?, ?, ?)",
                (label, description, created_at, f"{KEY_SCHEME}-{key_id}", digest_of(secret)),
            )
            conn.execute("COMMIT")
        return secret

    def list(self) -> list[KeyInfo]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT label, description, created_at, prefix FROM api_keys ORDER BY created_at, label"
            ).fetchall()
        return [KeyInfo(*row) for row in rows]

    def delete(self, label: str) -> None:
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM api_keys WHERE label = ?", (label,))
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key labelled {label!r}")

    def digests(self) -> list[str]:
        """Every stored digest. Read-only: never recreates a file someone deleted."""
        with _Connection(self.path, readonly=True) as conn:
            return [row[0] for row in conn.execute("SELECT digest FROM api_keys")]


class _Connection:
    """An autocommit connection (explicit BEGIN where a transaction matters), closed on exit.
    A failed block rolls back whatever it began."""

    def __init__(self, path: Path, readonly: bool = False):
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        else:
            self.conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        # Overwrite deleted rows' pages too: a deleted key leaves nothing behind in the file.
        self.conn.execute("PRAGMA secure_delete = ON")

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()


class KeyVerifier:
    """Answers "is this a valid key?" against the keys file and the keys given on the command line.

    Invariants: plaintext keys are hashed at construction and never kept; ``verify`` compares the
    presented key's digest with *every* known digest (``hmac.compare_digest``, no early exit), so the
    time taken does not tell which key, or how much of one, matched.
    """

    def __init__(self, store: KeyStore | None, api_keys: list[str] | tuple[str, ...] = ()):
        self._store = store
        self._static = [bytes.fromhex(digest_of(k)) for k in api_keys]
        self._db_digests: list[bytes] = []
        self._signature: tuple | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._maybe_reload(force=True)

    @classmethod
    def from_config(cls, keys_db: str | os.PathLike | None, api_keys: list[str] | None) -> KeyVerifier | None:
        """None means auth is off: no keys file and no ``--api-key``. A keys file with no keys in
        it turns auth on (nothing gets in until a key is created); that is deliberate."""
        api_keys = [k for k in (api_keys or [])]
        if any(not k for k in api_keys):
            raise KeyStoreError("--api-key must not be empty")
        if keys_db is None and not api_keys:
            return None
        return cls(KeyStore(keys_db) if keys_db is not None else None, api_keys)

    def verify(self, presented: str | None) -> bool:
        return self.identify(presented) is not None

    def identify(self, presented: str | None) -> str | None:
        """The valid key's public id (for logs and metrics), or None if the key is not valid: a key
        from the store is named by its prefix ``nps-<id>`` (public by design), the n-th
        ``--api-key`` by ``api-key-<n>``. Neither reveals anything of the secret."""
        if not presented:
            return None
        self._maybe_reload()
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        static_match = 0  # 1-based index of the matching --api-key, 0 for none
        db_match = False
        for i, known in enumerate(self._static, start=1):
            if hmac.compare_digest(known, candidate):
                static_match = static_match or i
        for known in self._db_digests:
            db_match |= hmac.compare_digest(known, candidate)
        if static_match:
            return f"api-key-{static_match}"
        if db_match:
            return "-".join(presented.split("-", 2)[:2])
        return None

    def _file_signature(self) -> tuple:
        """Cheap change detection: stat of the file (and a WAL beside it) plus SQLite's file change
        counter (header bytes 24..27, bumped by every commit in rollback-journal mode), which catches
        two commits inside one coarse mtime tick."""
        path = self._store.path
        parts: list = []
        for p in (path, path.with_name(path.name + "-wal")):
            try:
                st = os.stat(p)
                parts.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                parts.append(None)
        try:
            with open(path, "rb") as f:
                parts.append(f.read(28)[24:28])
        except FileNotFoundError:
            parts.append(None)
        return tuple(parts)

    def _maybe_reload(self, force: bool = False) -> None:
        if self._store is None:
            return
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        if not self._lock.acquire(blocking=force):
            return  # another thread is checking right now; its answer is a fraction of a second away
        try:
            self._next_check = now + RELOAD_INTERVAL_S
            signature = self._file_signature()
            if signature == self._signature:
                return
            try:
                # A deleted file means its keys are gone: no DB key is valid any more.
                digests = [] if signature[0] is None else [bytes.fromhex(d) for d in self._store.digests()]
            except sqlite3.Error as e:
                # Keep the previous keys and retry at the next check (signature left stale on purpose).
                logger.warning("could not reload API keys from %s: %s", self._store.path, e)
                return
            self._db_digests = digests
            self._signature = signature
        finally:
            self._lock.release()
