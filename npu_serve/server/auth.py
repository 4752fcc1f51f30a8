"""Bearer-key check for every route under ``/v1``, as pure ASGI middleware.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses pass straight through and a
client disconnect still reaches the endpoint as a cancellation. A refused request never reaches the
app: its body is not read and no engine work starts.

Protected: every path that starts with ``/v1`` (the root routes and the MaaS prefix
``/v1/infers/<uuid>/v1/...``); leading slashes are collapsed and case ignored, so ``//v1`` or ``/V1``
can't slip past should a router ever accept them. Open: everything else, notably ``/health`` and
``/version``. A missing or wrong key gets 401 with vLLM's flat error body, which the openai SDK turns
into ``AuthenticationError``.
"""

from __future__ import annotations

import json
import re

from npu_serve.server.keys import KeyVerifier

_PROTECTED = re.compile(r"^/+v1", re.IGNORECASE)


def is_protected(path: str) -> bool:
    return bool(_PROTECTED.match(path))


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
    def __init__(self, app, verifier: KeyVerifier):
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not is_protected(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers") or [])
        if token is not None and self.verifier.verify(token):
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
