"""`npu-serve serve | keys | bench`: the command line.

Nothing here imports torch at module import: `serve` first applies the OpenMP settings
(`runtime_env.apply`), which libgomp reads only once, when torch loads.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _add_serve_parser(subparsers) -> None:
    from npu_serve.config import add_cli_arguments

    p = subparsers.add_parser("serve", help="serve a model over the MaaS / OpenAI-compatible HTTP API")
    add_cli_arguments(p.add_argument_group("engine (npu_serve.config.EngineConfig; the same names as LLM(...) "
                                           "and AsyncEngine(...) take)"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="the name clients send as `model`")
    p.add_argument("--chat-template", default=None, metavar="FILE", help="a Jinja chat template file to use instead of the model's")
    p.add_argument("--reasoning-parser", choices=["deepseek_r1", "qwen3"], default=None,
                   help="split <think>...</think> output into reasoning_content")
    p.add_argument("--accept-unknown-fields", action="store_true",
                   help="request fields in no row of docs/api-fields.md are dropped with a warning (as current vLLM "
                        "does) instead of answering 400 (vLLM 0.6.0, the 909 contract)")
    p.add_argument("--no-playground", dest="playground", action="store_false",
                   help="do not serve the playground page (chat and dashboard) at / and /v1/infers/<id>/")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads (default: torch's choice; with tensor parallelism on CPU, the cores "
                        "divided among the node's ranks)")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], default=None)
    sec = p.add_argument_group("API keys and moderation")
    sec.add_argument("--keys-db", default=None, metavar="PATH",
                     help="SQLite key store (see `npu-serve keys`); default: the `npu-serve keys` store, if it exists")
    sec.add_argument("--api-key", action="append", default=[], metavar="KEY", help="accept this key (repeatable)")
    sec.add_argument("--moderation-words", default=None, metavar="FILE", help="one sensitive term per line")
    sec.add_argument("--no-moderation", action="store_true", help="turn content moderation off")
    sec.add_argument("--moderation-hook", default=None, metavar="MODULE:FUNCTION")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_operations_flags(p)
    p.set_defaults(func=_serve)


def _limit(text: str) -> int | None:
    """A non-negative integer, or none/off for no limit."""
    if text.lower() in ("none", "off"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or none), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_operations_flags(p: argparse.ArgumentParser) -> None:
    """Server-side settings (ServerConfig), hand-written; engine flags come from the engine's config."""
    from npu_serve.server.caps import RequestCaps
    from npu_serve.server.config import ServerConfig

    d, caps = ServerConfig(), RequestCaps()
    ops = p.add_argument_group("operations", "admission, limits, drain, watchdog, metrics, TLS and logs "
                               "(README: Operations)")
    ops.add_argument("--max-num-waiting-requests", type=_limit, default=d.max_num_waiting_requests, metavar="N",
                     help="refuse new requests with 503 + Retry-After while N requests wait (none: no limit; "
                          f"default {d.max_num_waiting_requests})")
    ops.add_argument("--max-num-waiting-tokens", type=_limit, default=d.max_num_waiting_tokens, metavar="N",
                     help="refuse new requests with 503 + Retry-After while N prompt tokens wait (default: none)")
    ops.add_argument("--max-request-body-bytes", type=_positive_int, default=d.max_request_body_bytes, metavar="N",
                     help=f"413 for larger request bodies (default {d.max_request_body_bytes})")
    ops.add_argument("--max-n", type=_positive_int, default=caps.max_n, metavar="N", help="cap on n and best_of")
    ops.add_argument("--max-stop-strings", type=_positive_int, default=caps.max_stop_strings, metavar="N")
    ops.add_argument("--max-stop-string-chars", type=_positive_int, default=caps.max_stop_string_chars, metavar="N")
    ops.add_argument("--max-messages", type=_positive_int, default=caps.max_messages, metavar="N")
    ops.add_argument("--max-logit-bias-entries", type=_positive_int, default=caps.max_logit_bias_entries, metavar="N")
    ops.add_argument("--max-logprobs", type=_positive_int, default=caps.max_logprobs, metavar="N",
                     help="cap on logprobs, top_logprobs and prompt_logprobs")
    ops.add_argument("--shutdown-timeout", "--graceful-shutdown-timeout", dest="shutdown_timeout", type=float,
                     default=d.shutdown_timeout_s, metavar="SECONDS",
                     help="on SIGTERM/SIGINT, running requests get this long before they end with finish_reason "
                          f"abort (default {d.shutdown_timeout_s:g}); a second signal stops at once")
    ops.add_argument("--metrics-require-key", action="store_true", help="/metrics needs an API key (default: open)")
    ops.add_argument("--log-requests", action="store_true",
                     help="log prompt and output text of every request (never API keys)")
    ops.add_argument("--ssl-keyfile", default=None, metavar="FILE", help="TLS private key (PEM); with --ssl-certfile")
    ops.add_argument("--ssl-certfile", default=None, metavar="FILE", help="TLS certificate chain (PEM)")


def _serve(args: argparse.Namespace) -> int:
    from npu_serve import runtime_env

    runtime_env.apply(args.threads, args.omp_wait_policy)  # before anything imports torch

    from npu_serve.config import EngineConfig
    from npu_serve.errors import InvalidParameter

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine_config = EngineConfig.from_cli(args)
    except InvalidParameter as e:
        print(f"npu-serve serve: error: {e}", file=sys.stderr)
        return 2
    if engine_config.node_rank > 0:  # a compute-only node of a multi-node tensor-parallel engine: no HTTP
        from npu_serve.distributed.node import serve_node

        return serve_node(engine_config)

    from npu_serve.server.app import build_app
    from npu_serve.server.signals import DrainingServer

    config = server_config(args)

    def engine_factory():
        from npu_serve import AsyncEngine

        return AsyncEngine.from_config(engine_config)

    fatal: list[str] = []
    server: DrainingServer | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = build_app(engine_factory, config, on_fatal=on_fatal)
    server = DrainingServer(uvicorn_config(args, app), app.state.server.drain)
    from npu_serve.server import log_queue

    log_queue.move_off_loop()  # after uvicorn set up its loggers: the event loop only queues records
    scheme = "https" if args.ssl_certfile else "http"
    print(f"npu-serve: listening on {scheme}://{args.host}:{args.port} (GET /health turns 200 once the model is "
          "ready)", flush=True)
    server.run()
    log_queue.flush()  # the log lines before the closing message below
    if fatal:
        print(f"npu-serve: {fatal[0]}", file=sys.stderr)
        return 1
    if server.forced:
        print("npu-serve: stopped by a second signal before the drain finished", file=sys.stderr)
        return 1
    return 0


def uvicorn_config(args: argparse.Namespace, app):
    """uvicorn's settings for `serve`. Its own graceful timeout only backs up our drain (drain.py),
    which lets uvicorn stop once no request is left."""
    import uvicorn

    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        raise SystemExit("npu-serve: --ssl-keyfile and --ssl-certfile go together")
    return uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                          ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile)


def server_config(args: argparse.Namespace):
    """The ServerConfig that `serve`'s flags ask for (reads the --chat-template file)."""
    from npu_serve.server.caps import RequestCaps
    from npu_serve.server.config import ServerConfig

    chat_template = None
    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    return ServerConfig(
        served_model_name=args.served_model_name, chat_template=chat_template,
        reasoning_parser=args.reasoning_parser, keys_db=resolve_keys_db(args.keys_db), api_keys=tuple(args.api_key),
        moderation=not args.no_moderation, moderation_words=args.moderation_words,
        moderation_hook=args.moderation_hook, accept_unknown_fields=args.accept_unknown_fields,
        max_num_waiting_requests=args.max_num_waiting_requests, max_num_waiting_tokens=args.max_num_waiting_tokens,
        max_request_body_bytes=args.max_request_body_bytes, shutdown_timeout_s=args.shutdown_timeout,
        metrics_require_key=args.metrics_require_key, log_requests=args.log_requests, playground=args.playground,
        caps=RequestCaps(max_n=args.max_n, max_stop_strings=args.max_stop_strings,
                         max_stop_string_chars=args.max_stop_string_chars, max_messages=args.max_messages,
                         max_logit_bias_entries=args.max_logit_bias_entries, max_logprobs=args.max_logprobs))


def resolve_keys_db(given: str | None) -> str | None:
    """The key store to enforce: the one given, else the default store `npu-serve keys create` writes to,
    when it exists. Keys a user created are then enforced without repeating the path (MaaS has no
    keyless mode once keys exist); with neither, auth is off and the server says so at start."""
    if given is not None:
        return given
    from npu_serve.server.keys import default_keys_db_path

    default = default_keys_db_path()
    return str(default) if default.exists() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npu-serve", description="LLM serving with a MaaS-compatible API")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(subparsers)
    from npu_serve.server.keys_cli import add_keys_parser

    add_keys_parser(subparsers)
    from npu_serve.bench.cli import add_bench_parser

    add_bench_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
