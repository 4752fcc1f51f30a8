"""`npu-serve bench [options]`, `npu-serve bench plot FILES -o X.png`, `npu-serve bench table FILES`.

Imports stay light at parse time (no aiohttp, no matplotlib) so `npu-serve --help` is quick. Every
BenchError is printed as `npu-serve bench: error: MESSAGE` with exit status 2, as argparse does for
its own errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from npu_serve.bench.errors import BenchError

RUN_HELP = """Benchmark any OpenAI-compatible server (npu-serve, vLLM, llama.cpp's llama-server, MaaS) with
streaming requests. One run per --concurrency value (closed loop) or --request-rate value (Poisson
open loop); every run gets fresh prompts. Reports output tok/s, req/s, TTFT / TPOT / ITL /
end-to-end p50/p90/p99, goodput, errors and short streams; writes a JSON results file.
`npu-serve bench plot FILES -o X.png` overlays results files; `npu-serve bench table FILES` prints
a markdown table."""


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark an OpenAI-compatible server (see `npu-serve bench -h`)",
                              description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    srv = p.add_argument_group("server")
    srv.add_argument("--base-url", default="http://127.0.0.1:8000/v1",
                     help="the OpenAI base URL (default %(default)s; a bare http://host:port gets /v1)")
    srv.add_argument("--model", default=None, help="model name to send (default: the only one GET /models lists)")
    srv.add_argument("--api-key", default=None, help="Bearer key (default: $OPENAI_API_KEY, else none)")
    srv.add_argument("--endpoint", choices=["chat", "completions"], default="chat",
                     help="/chat/completions (default) or /completions")
    srv.add_argument("--timeout", type=float, default=600.0, help="seconds a request may stay silent (default 600)")
    srv.add_argument("--server-pid", type=int, default=None,
                     help="PID of the server process: record its CPU use (process tree) per run")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", default=None, metavar="C[,C...]",
                      help=f"closed loop: C users at a time, one run per value (default {_default_conc()})")
    load.add_argument("--request-rate", default=None, metavar="R[,R...]",
                      help="open loop instead: Poisson arrivals, R requests/s (inf = all at once), one run per value")
    load.add_argument("--max-concurrency", type=int, default=None, help="open loop: at most this many in flight")
    load.add_argument("--num-prompts", default=None, metavar="N[,N...]",
                      help="requests per run: one count, or one per run (default max(16, 2 x concurrency))")
    load.add_argument("--warmup", type=int, default=0, help="unmeasured requests before each run (default 0)")
    wl = p.add_argument_group("workload")
    wl.add_argument("--input-tokens", default=None, metavar="N|MIN-MAX",
                    help="synthetic prompt length in tokens of the user text, uniform in MIN-MAX (default 256)")
    wl.add_argument("--tokenizer", default=None, metavar="DIR",
                    help="count prompt tokens with this tokenizer.json (a model directory or the file); "
                         "without it one word counts as one token")
    wl.add_argument("--dataset", default=None, metavar="FILE",
                    help="ShareGPT-style JSON/JSONL: prompts from the first human turn (or a 'prompt' key)")
    wl.add_argument("--max-tokens", type=int, default=128, help="output tokens asked per request (default 128)")
    wl.add_argument("--ignore-eos", action="store_true",
                    help="ask the server to go on past EOS (max-tokens every time)")
    wl.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    wl.add_argument("--extra-body", default=None, metavar="JSON", help="more request fields, e.g. '{\"top_k\": 1}'")
    wl.add_argument("--no-stream-usage", action="store_true",
                    help="do not send stream_options.include_usage (for servers that refuse it); "
                         "output tokens are then counted as text chunks")
    wl.add_argument("--seed", type=int, default=0, help="seed of the prompt words and Poisson arrivals (default 0)")
    wl.add_argument("--salt", default=None,
                    help="fix the prompts' per-invocation salt (default: random, so no prefix cache "
                         "helps across invocations)")
    out = p.add_argument_group("results")
    out.add_argument("--goodput", default=None, metavar="SLOS",
                     help="count requests meeting SLOs in ms, e.g. ttft:500,tpot:50 (metrics: ttft, tpot, e2el)")
    out.add_argument("--label", default=None, help="name of this server in tables and plots (default MODEL@HOST:PORT)")
    out.add_argument("-o", "--output", default=None, metavar="FILE.json",
                     help="results file (default npu-serve-bench-<time>.json in the current directory)")
    out.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the plot (needs the [bench] extra)")
    out.add_argument("--save-requests", action="store_true", help="keep every request's timings in the results file")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run, bench_parser=p)

    sub = p.add_subparsers(dest="bench_command", metavar="{plot,table}")
    pp = sub.add_parser("plot", help="overlay results files in one PNG")
    pp.add_argument("files", nargs="+", metavar="RESULTS.json")
    pp.add_argument("-o", "--output", dest="plot_output", required=True, metavar="FILE.png")
    pp.add_argument("--title", default=None)
    pp.set_defaults(func=_plot)
    pt = sub.add_parser("table", help="print results files as one markdown table")
    pt.add_argument("files", nargs="+", metavar="RESULTS.json")
    pt.set_defaults(func=_table)


def _default_conc() -> str:
    from npu_serve.bench.config import DEFAULT_CONCURRENCY

    return DEFAULT_CONCURRENCY


def _fail(args: argparse.Namespace, e: BenchError) -> int:
    args.bench_parser.exit(2, f"npu-serve bench: error: {e}\n")
    return 2  # not reached


def _refuse_run_options(args: argparse.Namespace) -> None:
    """`bench --concurrency 4 plot ...` would silently ignore --concurrency: refuse it instead."""
    p = args.bench_parser
    given = [a.option_strings[-1] for a in p._actions  # noqa: SLF001 - argparse has no public list
             if a.dest not in ("help", "bench_command", "func", "bench_parser") and a.option_strings
             and getattr(args, a.dest, a.default) != a.default]
    if given:
        raise BenchError(f"options of a benchmark run ({', '.join(given)}) do nothing for "
                         f"`bench {args.bench_command}`; drop them")


def _run(args: argparse.Namespace) -> int:
    from npu_serve.bench.config import BenchConfig

    try:
        cfg = BenchConfig.from_args(args)
        if cfg.plot:
            from npu_serve.bench.plot import require_matplotlib

            require_matplotlib()  # fail before the benchmark, not after it
        return _run_config(cfg)
    except BenchError as e:
        return _fail(args, e)
    except KeyboardInterrupt:
        print("npu-serve bench: interrupted; no results written", file=sys.stderr)
        return 130


def _run_config(cfg) -> int:
    import datetime as dt

    from npu_serve.bench.report import results_document, write_results
    from npu_serve.bench.runner import run_bench

    inv = asyncio.run(run_bench(cfg))
    doc = results_document(cfg, inv)
    path = cfg.output or f"npu-serve-bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    write_results(path, doc)
    print(f"results: {path}")
    if cfg.plot:
        from npu_serve.bench.plot import plot_results

        print(f"plot: {plot_results([doc], cfg.plot)}")
    else:
        print(f"plot: npu-serve bench plot {path} [more.json ...] -o bench.png")
    failed = sum(r.stats.errors for r in inv.runs)
    return 1 if failed else 0


def _plot(args: argparse.Namespace) -> int:
    from npu_serve.bench.plot import plot_results
    from npu_serve.bench.report import load_results

    try:
        _refuse_run_options(args)
        print(f"plot: {plot_results(load_results(args.files), args.plot_output, args.title)}")
    except BenchError as e:
        return _fail(args, e)
    return 0


def _table(args: argparse.Namespace) -> int:
    from npu_serve.bench.report import load_results, markdown_table

    try:
        _refuse_run_options(args)
        print(markdown_table(load_results(args.files)))
    except BenchError as e:
        return _fail(args, e)
    return 0


def main(argv: list[str] | None = None) -> int:
    from npu_serve.cli import main as npu_serve_main

    return npu_serve_main(["bench", *(argv if argv is not None else sys.argv[1:])])
