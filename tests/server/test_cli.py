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


def test_operations_flags_reach_the_server_config(tmp_path, monkeypatch):
    from npu_serve.cli import server_config

    monkeypatch.setenv("NPU_SERVE_DATA", str(tmp_path))
    args = build_parser().parse_args([
        "serve", "--max-num-waiting-requests", "8", "--max-num-waiting-tokens", "4096",
        "--max-request-body-bytes", "1000", "--shutdown-timeout", "30", "--metrics-require-key", "--log-requests",
        "--max-n", "4", "--max-stop-strings", "5", "--max-stop-string-chars", "6", "--max-messages", "7",
        "--max-logit-bias-entries", "9", "--max-logprobs", "3", "--step-timeout", "2.5"])
    cfg = server_config(args)
    assert (cfg.max_num_waiting_requests, cfg.max_num_waiting_tokens, cfg.max_request_body_bytes) == (8, 4096, 1000)
    assert (cfg.shutdown_timeout_s, cfg.metrics_require_key, cfg.log_requests) == (30.0, True, True)
    c = cfg.caps
    assert (c.max_n, c.max_stop_strings, c.max_stop_string_chars, c.max_messages, c.max_logit_bias_entries,
            c.max_logprobs) == (4, 5, 6, 7, 9, 3)
    assert args.step_timeout == 2.5
    defaults = build_parser().parse_args(["serve"])
    assert defaults.step_timeout is None and server_config(defaults).shutdown_timeout_s == 60.0
    assert server_config(build_parser().parse_args(["serve", "--max-num-waiting-requests", "none"])) \
        .max_num_waiting_requests is None


def test_bad_operations_flags_are_refused(capsys):
    import pytest

    for argv in (["--max-num-waiting-requests", "-1"], ["--max-request-body-bytes", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *argv])


def test_tls_flags_reach_uvicorn(tmp_path):
    import pytest

    from npu_serve.cli import uvicorn_config

    args = build_parser().parse_args(["serve", "--ssl-keyfile", "k.pem", "--ssl-certfile", "c.pem", "--port", "1"])
    cfg = uvicorn_config(args, app=None)
    assert (cfg.ssl_keyfile, cfg.ssl_certfile, cfg.port) == ("k.pem", "c.pem", 1)
    with pytest.raises(SystemExit):
        uvicorn_config(build_parser().parse_args(["serve", "--ssl-keyfile", "k.pem"]), app=None)


def test_graceful_shutdown_timeout_is_the_drain_deadline():
    """docker/serve.sh passes --graceful-shutdown-timeout: the same setting as --shutdown-timeout."""
    from npu_serve.cli import server_config

    args = build_parser().parse_args(["serve", "--graceful-shutdown-timeout", "42"])
    assert server_config(args).shutdown_timeout_s == 42.0
