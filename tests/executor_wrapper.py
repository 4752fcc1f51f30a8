"""ExecutorWrapper: the engine's real executor with `execute` open to override, for tests that inject
a fault, a hang or a gate into one forward. Every other attribute (watch, shutdown, kv_caches, spec)
is the real executor's, so the engine drives a wrapper exactly as it drives the executor."""

from __future__ import annotations


class ExecutorWrapper:
    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):  # only reached for what the wrapper itself lacks
        return getattr(self.real, name)

    def execute(self, so):
        return self.real.execute(so)
