"""`npu-serve bench`: a serving benchmark client for any OpenAI-compatible server.

- workload.py, words.py, tokens.py: prompts (synthetic from a seeded word list, or a dataset), fresh per run
- client.py: the streaming client that timestamps every chunk
- drivers.py: closed loop (concurrency) and open loop (Poisson request rate)
- stats.py: percentiles, TTFT / TPOT / ITL / latency, goodput
- machine.py: how busy the cores were during a run
- runner.py: one invocation, run by run; report.py: results files, text, markdown; plot.py: the PNG
- config.py, cli.py: the command line, checked once

Nothing here imports torch or the engine: it talks HTTP only, so it measures any server the same way.
"""
