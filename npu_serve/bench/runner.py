"""One benchmark invocation: resolve the model, probe the server once, then one run per load level.

Each run gets fresh prompts (its own salt), optional unmeasured warm-up requests, a progress bar,
and a CPU meter; its statistics are printed as soon as it ends. The probe request checks that the
server answers at all (a wrong model name or key fails here, with the server's own message) and
shows whether it reports usage.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass

from tqdm import tqdm

from npu_serve.bench import client as client_mod
from npu_serve.bench.client import ClientSettings, RequestRecord, StreamClient
from npu_serve.bench.config import BenchConfig
from npu_serve.bench.drivers import Trace, closed_loop, open_loop
from npu_serve.bench.errors import BenchError
from npu_serve.bench.machine import CpuMeter, CpuUse, check_pid
from npu_serve.bench.report import format_run
from npu_serve.bench.stats import RunStats, summarize
from npu_serve.bench.tokens import TokenCounter
from npu_serve.bench.workload import PromptSource, load_dataset, make_prompts


@dataclass
class RunResult:
    mode: str  # "closed" | "open"
    concurrency: int | None
    request_rate: float | None
    max_concurrency: int | None
    num_prompts: int
    salt: str
    stats: RunStats
    cpu: CpuUse
    requests: list[RequestRecord] | None = None  # with --save-requests


@dataclass
class Invocation:
    """Everything a results file records besides the runs."""

    model: str
    salt: str
    token_counter: str
    probe_token_source: str
    runs: list[RunResult]


async def resolve_model(cfg: BenchConfig) -> str:
    if cfg.model:
        return cfg.model
    models = await client_mod.served_models(cfg.base_url, cfg.api_key)
    if len(models) != 1:
        raise BenchError(f"{cfg.base_url}/models lists {models or 'no models'}; say which one with --model")
    return models[0]


async def run_bench(cfg: BenchConfig, out=None) -> Invocation:
    out = out or sys.stdout
    if cfg.server_pid is not None:
        check_pid(cfg.server_pid)
    counter = TokenCounter.from_path(cfg.tokenizer)
    source = PromptSource(cfg.input_tokens, load_dataset(cfg.dataset) if cfg.dataset else None)
    model = await resolve_model(cfg)
    salt = cfg.salt or secrets.token_hex(8)
    settings = ClientSettings(
        base_url=cfg.base_url, model=model, endpoint=cfg.endpoint, api_key=cfg.api_key, max_tokens=cfg.max_tokens,
        temperature=cfg.temperature, ignore_eos=cfg.ignore_eos, stream_usage=cfg.stream_usage,
        extra_body=cfg.extra_body, timeout_s=cfg.timeout_s)
    runs: list[RunResult] = []
    async with StreamClient(settings) as client:
        probe = await client.send(-1, make_prompts(source, 1, seed=cfg.seed, salt=f"{salt}:probe", counter=counter)[0])
        if not probe.ok:
            raise BenchError(f"the first request to {client.url} (model {model!r}) failed: {probe.error}")
        if probe.token_source != client_mod.USAGE:
            print("note: the server sent no usage in its stream; output tokens are counted as text chunks "
                  "(one token per chunk, an approximation)", file=out)
        for k, (load, n) in enumerate(zip(cfg.loads, cfg.num_prompts)):
            runs.append(await _one_run(cfg, client, source, counter, f"{salt}:{k}", load, n, out))
    return Invocation(model, salt, counter.method, probe.token_source, runs)


async def _drive(cfg: BenchConfig, client: StreamClient, prompts, load, progress) -> Trace:
    if cfg.mode == "closed":
        return await closed_loop(client.send, prompts, int(load), progress)
    return await open_loop(client.send, prompts, float(load), seed=cfg.seed, max_concurrency=cfg.max_concurrency,
                           progress=progress)


async def _one_run(cfg: BenchConfig, client: StreamClient, source: PromptSource, counter: TokenCounter,
                   salt: str, load: float, n: int, out) -> RunResult:
    name = f"c={int(load)}" if cfg.mode == "closed" else f"rate={load:g}/s"
    if cfg.warmup:
        warm = make_prompts(source, cfg.warmup, seed=cfg.seed, salt=salt + ":warmup", counter=counter)
        await _drive(cfg, client, warm, load, None)
    prompts = make_prompts(source, n, seed=cfg.seed, salt=salt, counter=counter)
    meter = CpuMeter(cfg.server_pid)
    with tqdm(total=n, desc=name, unit="req", disable=not cfg.progress, file=sys.stderr, leave=False) as bar:
        trace = await _drive(cfg, client, prompts, load, bar)
    cpu = meter.stop()
    stats = summarize(trace.records, trace.duration_s, ignore_eos=cfg.ignore_eos, slos=cfg.slos)
    result = RunResult(mode=cfg.mode, concurrency=int(load) if cfg.mode == "closed" else None,
                       request_rate=float(load) if cfg.mode == "open" else None,
                       max_concurrency=cfg.max_concurrency, num_prompts=n, salt=salt, stats=stats, cpu=cpu,
                       requests=trace.records if cfg.save_requests else None)
    print(format_run(result), file=out, flush=True)
    return result
