"""build_app: the Starlette application, its routes, and the lifespan that owns the engine.

The engine loads in the background after the socket is open, so `/health` can answer 503 while
the model loads and warms up (orchestrators poll it); every model route answers 503 until then.
A load failure is reported on `/health` and handed to `on_fatal` (the CLI stops uvicorn and exits 1).
So is an engine that dies while serving (a tensor-parallel rank gone, the loop broken): `/health`
answers 503 at once, running requests end with an error, and `on_fatal` follows DEAD_EXIT_DELAY_S
later, so load balancers and streams see the failure before the socket closes.

`/health` is also 503 while draining (drain.py) and once the engine got stuck (the step watchdog).

Middleware, outermost first: GateMiddleware (body size, drain, admission, refusal counts), then
the playground's static page (playground/pages.py; not with --no-playground), then the API-key
check, then the routes. The server knows the engine only as an `EngineClient`
(engine/client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from npu_serve.engine.client import EngineClient
from npu_serve.server.chat import create_chat_completion
from npu_serve.server.completions import create_completion
from npu_serve.server.config import ServerConfig
from npu_serve.server.errors import EXCEPTION_HANDLERS
from npu_serve.server.gate import GateMiddleware
from npu_serve.server.metrics import CONTENT_TYPE, engine_info, package_version
from npu_serve.server.models import list_models
from npu_serve.server.openapi import openapi_document
from npu_serve.server.serving import ServerState, server_state

logger = logging.getLogger(__name__)

EngineOrFactory = EngineClient | Callable[[], EngineClient]  # an engine, or a blocking zero-argument builder

# Seconds between the engine dying and `on_fatal` (the process exit): /health says 503 meanwhile.
DEAD_EXIT_DELAY_S = 3.0
_HEALTH_POLL_S = 0.2


async def health(request: Request) -> Response:
    state = server_state(request)
    if state.load_error is not None:
        return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
    if state.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    if not state.engine.is_healthy:
        return JSONResponse({"status": "error", "message": state.engine.dead_reason or "the engine has stopped"},
                            status_code=503)
    return Response(status_code=200)


async def version(request: Request) -> JSONResponse:
    """The package version, and once loaded the engine's static facts (model, device, dtype,
    max_model_len, block size, KV blocks, tensor parallel size) for dashboards and the playground."""
    return JSONResponse({"version": package_version(), **engine_info(server_state(request))})


async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.exposition(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


def _routes() -> list[Route]:
    api = [
        ("/v1/models", list_models, ["GET"]),
        ("/v1/chat/completions", create_chat_completion, ["POST"]),
        ("/v1/completions", create_completion, ["POST"]),
    ]
    routes = [Route("/health", health, methods=["GET"]), Route("/version", version, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"]),
              # For the playground under the MaaS prefix (whose relative `metrics` lands here; a gateway
              # that forwards only the service's prefix reaches nothing else). Under /v1: keyed.
              Route("/v1/infers/{service_id}/metrics", metrics, methods=["GET"])]
    for path, endpoint, methods in api:
        routes.append(Route(path, endpoint, methods=methods))
        # MaaS's per-service prefix: base_url = https://HOST/v1/infers/<service-uuid>/v1
        routes.append(Route("/v1/infers/{service_id}" + path, endpoint, methods=methods))
    return routes


async def _warm_up(engine: EngineClient) -> None:
    """One short greedy request so lazy initialisation happens before the first client."""
    from npu_serve.sampling_params import SamplingParams

    ids = list(engine.tokenizer.encode("Hello", add_special_tokens=False)) or [0]
    async for _ in engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=2), "warmup"):
        pass


async def _load(state: ServerState, engine_or_factory: EngineOrFactory, on_fatal: Callable[[str], None] | None):
    try:
        if callable(engine_or_factory) and not hasattr(engine_or_factory, "generate"):
            state.engine = await asyncio.to_thread(engine_or_factory)
        else:
            state.engine = engine_or_factory
        state.model_name = state.config.served_model_name or state.engine.model_name
        if state.config.warmup:
            await _warm_up(state.engine)
        state.ready = True
        logger.info("serving %s (max_model_len %d)", state.model_name, state.engine.max_model_len)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - reported on /health and to on_fatal
        logger.exception("the model failed to load")
        state.load_error = f"{type(e).__name__}: {e}"
        if on_fatal is not None:
            on_fatal(f"the model failed to load: {state.load_error}")
        return
    if on_fatal is not None:
        await _watch(state.engine, on_fatal)


async def _watch(engine: EngineClient, on_fatal: Callable[[str], None]) -> None:
    """Hand a dead engine to on_fatal (after DEAD_EXIT_DELAY_S, answering 503 meanwhile)."""
    while engine.is_healthy:
        await asyncio.sleep(_HEALTH_POLL_S)
    reason = engine.dead_reason or "the engine has stopped"
    logger.error("the engine stopped: %s; exiting in %.0f s", reason, DEAD_EXIT_DELAY_S)
    await asyncio.sleep(DEAD_EXIT_DELAY_S)
    on_fatal(f"the engine stopped: {reason}")


def _security(app: Starlette, state: ServerState) -> None:
    """API keys and moderation (issue 5's modules), imported only when configured."""
    cfg = state.config
    if cfg.keys_db or cfg.api_keys:
        from npu_serve.server.auth import ApiKeyAuthMiddleware
        from npu_serve.server.keys import KeyVerifier

        verifier = KeyVerifier.from_config(cfg.keys_db, list(cfg.api_keys))
        if verifier is not None:
            extra = ("/metrics",) if cfg.metrics_require_key else ()
            app.add_middleware(ApiKeyAuthMiddleware, verifier=verifier, extra_paths=extra)
        else:
            logger.warning("auth is off: no API keys configured")
    else:
        if cfg.metrics_require_key:
            raise ValueError("--metrics-require-key needs API keys (--api-key or --keys-db)")
        logger.warning("auth is off: no --keys-db or --api-key given; every client is served")
    if cfg.moderation:
        try:
            from npu_serve.server.moderation import Moderator
        except ImportError:
            if cfg.moderation_words or cfg.moderation_hook:
                raise
            logger.warning("moderation is off: npu_serve.server.moderation is not available")
            return
        state.moderator = Moderator.from_config(cfg.moderation_words, cfg.moderation_hook, enabled=True)
    if state.moderator is None:
        logger.warning("moderation is off")


def build_app(engine: EngineOrFactory, config: ServerConfig | None = None,
              on_fatal: Callable[[str], None] | None = None) -> Starlette:
    """The whole HTTP API over one engine.

    `engine` is either an EngineClient such as AsyncEngine (the caller owns it; it is not shut down
    here) or a zero-argument factory that builds one (blocking; run in a thread; the lifespan shuts
    it down).
    """
    state = ServerState(config=config or ServerConfig())
    owns_engine = callable(engine) and not hasattr(engine, "generate")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loader = asyncio.create_task(_load(state, engine, on_fatal))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(BaseException):
                await loader
            if owns_engine and state.engine is not None:
                await state.engine.shutdown()

    app = Starlette(routes=_routes(), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.server = state
    app.state.openapi = openapi_document(state.config)
    _security(app, state)
    if state.config.playground:
        from npu_serve.server.playground import PlaygroundMiddleware

        app.add_middleware(PlaygroundMiddleware)  # outside the key check: the page is static; its calls are keyed
    app.add_middleware(GateMiddleware, state=state)  # added last: outermost
    return app
