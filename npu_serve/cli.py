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
    p.add_argument("--graceful-shutdown-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, stop accepting requests and give running ones this long to finish")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_serve)


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

    import uvicorn

    from npu_serve.server.app import build_app

    config = server_config(args)

    def engine_factory():
        from npu_serve import AsyncEngine

        return AsyncEngine.from_config(engine_config)

    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = build_app(engine_factory, config, on_fatal=on_fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=args.graceful_shutdown_timeout))
    print(f"npu-serve: listening on http://{args.host}:{args.port} (GET /health turns 200 once the model is ready)",
          flush=True)
    server.run()
    if fatal:
        print(f"npu-serve: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def server_config(args: argparse.Namespace):
    """The ServerConfig that `serve`'s flags ask for (reads the --chat-template file)."""
    from npu_serve.server.config import ServerConfig

    chat_template = None
    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    return ServerConfig(
        served_model_name=args.served_model_name, chat_template=chat_template,
        reasoning_parser=args.reasoning_parser, keys_db=resolve_keys_db(args.keys_db), api_keys=tuple(args.api_key),
        moderation=not args.no_moderation, moderation_words=args.moderation_words,
        moderation_hook=args.moderation_hook, accept_unknown_fields=args.accept_unknown_fields)


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
