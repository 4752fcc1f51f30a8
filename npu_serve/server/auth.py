"""Bearer-key check for every route under ``/v1``, as pure ASGI middleware.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses pass straight through and a
client disconnect still reaches the endpoint as a cancellation. A refused request never reaches the
app: its body is not read and no engine work starts.

Protected: every path that starts with ``/v1`` (the root routes and the MaaS prefix
``/v1/infers/<uuid>/v1/...``); leading slashes are collapsed and case ignored, so ``//v1`` or ``/V1``
can't slip past should a router ever accept them. Open: everything else, notably ``/health`` and
``/version``; ``/metrics`` too, unless ``--metrics-require-key`` (``extra_paths``). A missing or
wrong key gets 401 with vLLM's flat error body, which the openai SDK turns into
``AuthenticationError``. An accepted key's public id (never the key) is left in the scope's state
under ``KEY_ID_STATE`` for the request log.
"""

from __future__ import annotations

import json
import re

from npu_serve.server.keys import KeyVerifier

_PROTECTED = re.compile(r"^/+v1", re.IGNORECASE)
KEY_ID_STATE = "api_key_id"


def is_protected(path: str, extra_paths: tuple[str, ...] = ()) -> bool:
    if _PROTECTED.match(path):
        return True
    normal = "/" + path.lstrip("/").lower().rstrip("/")
    return normal in extra_paths


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from the first ``Authorization: Bearer <key>`` header; None if absent or malformed."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            return token
    return None


def _error_body(message: str) -> bytes:
    body = {"object": "error", "message": message, "type": "AuthenticationError", "param": None, "code": 401}
    return json.dumps(body).encode("utf-8")


class ApiKeyAuthMiddleware:
    def __init__(self, app, verifier: KeyVerifier, extra_paths: tuple[str, ...] = ()):
        self.app = app
        self.verifier = verifier
        self.extra_paths = tuple(extra_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not is_protected(scope.get("path", ""), self.extra_paths):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers") or [])
        key_id = self.verifier.identify(token) if token is not None else None
        if key_id is not None:
            scope.setdefault("state", {})[KEY_ID_STATE] = key_id
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if token is None:
            message = "Missing API key: send the header 'Authorization: Bearer <API key>'."
        else:
            message = "Invalid API key."
        body = _error_body(message)
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        })
        await send({"type": "http.response.body", "body": body})
