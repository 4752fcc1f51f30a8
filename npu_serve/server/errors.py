"""Errors as vLLM 0.6.0's OpenAI server shapes them, and the exception handlers that send them.

Every error before a stream starts leaves as HTTP status + the flat body
`{"object": "error", "message", "type", "param", "code"}` (MaaS documents this shape). `param`
names the offending request field where we know it (vLLM 0.6.0 always sent null there; naming it
is additive and is what the MaaS contract asks for). Errors after a stream started are sent
in-band instead, see `streaming_error_data`.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from npu_serve.errors import EngineDeadError, InvalidParameter

logger = logging.getLogger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """Raise anywhere in a handler to answer `status` with the flat error body."""

    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or _TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "") + "Error")


def error_body(status: int, message: str, param: str | None = None, err_type: str | None = None) -> dict:
    err = APIError(status, message, param, err_type)
    return {"object": "error", "message": err.message, "type": err.err_type, "param": err.param, "code": status}


def error_response(err: APIError, retry_after_s: int = 1) -> JSONResponse:
    """The flat body; a 503 says when to retry (load balancers and the openai SDK read Retry-After),
    a 413 closes the connection (the unread rest of the body must not be parsed as a request)."""
    headers = {}
    if err.status == 503:
        headers["Retry-After"] = str(retry_after_s)
    elif err.status == 413:
        headers["Connection"] = "close"
    return JSONResponse(error_body(err.status, err.message, err.param, err.err_type), status_code=err.status,
                        headers=headers)


def _retry_after(request: Request) -> int:
    state = getattr(request.app.state, "server", None)
    return state.config.retry_after_s if state is not None else 1


def streaming_error_data(err: APIError) -> str:
    """The in-band error event's data, exactly as vLLM 0.6.0 writes it: the flat body wrapped in
    `{"error": ...}` (json.dumps default separators). The openai SDK raises APIError on it."""
    return json.dumps({"error": error_body(err.status, err.message, err.param, err.err_type)})


def as_api_error(exc: BaseException) -> APIError:
    """Map any exception a handler or the engine raises to the APIError a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidParameter):
        return APIError(400, exc.message, exc.param)
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"The engine is not running: {exc}")
    return APIError(500, f"{type(exc).__name__}: {exc}")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(as_api_error(exc), _retry_after(request))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = error_response(APIError(exc.status_code, str(exc.detail)), _retry_after(request))
    for name, value in (exc.headers or {}).items():  # e.g. Allow on a 405
        response.headers[name] = value
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(as_api_error(exc), _retry_after(request))


EXCEPTION_HANDLERS = {
    APIError: _api_error,
    InvalidParameter: _api_error,
    EngineDeadError: _api_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
