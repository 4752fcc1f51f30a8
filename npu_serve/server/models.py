"""GET /v1/models: the one served model."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from npu_serve.server.protocol import ModelCard, ModelList
from npu_serve.server.serving import server_state


async def list_models(request: Request) -> JSONResponse:
    state = server_state(request)
    engine = state.require_engine()
    card = ModelCard(id=state.model_name, created=int(state.started), root=state.model_name,
                     max_model_len=engine.max_model_len,
                     description=f"{state.model_name} served by npu-serve (context {engine.max_model_len} tokens)")
    return JSONResponse(ModelList(data=[card]).model_dump())
