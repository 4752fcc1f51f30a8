"""The `npu-serve` command line: parsing and the key store it enforces by default."""

from __future__ import annotations

import subprocess
import sys

from npu_serve.cli import build_parser, resolve_keys_db


def test_serve_enforces_the_default_key_store_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_SERVE_DATA", str(tmp_path))
    assert resolve_keys_db(None) is None  # no store yet: auth off
    env = {"NPU_SERVE_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"}
    made = subprocess.run([sys.executable, "-m", "npu_serve.cli", "keys", "create", "--label", "ci", "--description", "d"],
                          capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    assert resolve_keys_db(None) == str(tmp_path / "keys.db")
    assert resolve_keys_db("/elsewhere.db") == "/elsewhere.db"


def test_serve_flags_parse_with_engine_defaults():
    args = build_parser().parse_args(["serve", "--port", "9000", "--api-key", "a", "--api-key", "b"])
    assert (args.port, args.api_key, args.max_num_seqs, args.host) == (9000, ["a", "b"], 128, "127.0.0.1")


def test_accept_unknown_fields_flag_reaches_the_server_config(tmp_path, monkeypatch):
    from npu_serve.cli import server_config

    monkeypatch.setenv("NPU_SERVE_DATA", str(tmp_path))  # no default key store here
    assert server_config(build_parser().parse_args(["serve"])).accept_unknown_fields is False
    assert server_config(build_parser().parse_args(["serve", "--accept-unknown-fields"])).accept_unknown_fields is True
