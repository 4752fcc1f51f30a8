"""The MaaS / vLLM-0.6.0-compatible HTTP server. `build_app` lives in `npu_serve.server.app`.

Nothing is imported here on purpose: `npu-serve keys ...` and the unit tests import single
modules of this package without pulling in the engine (and torch).
"""
