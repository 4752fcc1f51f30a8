"""PlaygroundMiddleware: serves the playground page at `/` and under MaaS's `/v1/infers/<id>/`.

Pure ASGI, placed outside the API-key middleware (app.py): a browser navigating to the page cannot
send a Bearer header, and under the MaaS prefix every path starts with `/v1`, which the key check
guards as a whole. So only the static files pass here, by exact name, for GET and HEAD: the page
holds no secret, and every API call it makes (`v1/models`, `v1/chat/completions`, `metrics`)
goes through the key check like any client's, carrying the key typed into the page. Anything
else (another method, an unknown file) falls through to the app, where the key check still applies.

URLs in the page are relative, so the same files work at the root and under the prefix:
`/` -> `playground/app.js`, `v1/chat/completions`, `metrics`;
`/v1/infers/<id>/` -> `/v1/infers/<id>/playground/app.js`, `/v1/infers/<id>/v1/chat/completions`, ...
`/v1/infers/<id>` (no slash) is redirected to the slash form, which the relative URLs need.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# The page may talk only to the server it came from, and load nothing from anywhere else: the
# browser itself enforces "no CDN" and blocks injected inline script.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# group "prefix": "" or "/v1/infers/<id>"; group "file": "" (the page) or a file name.
_PAGE = re.compile(r"^(?P<prefix>/v1/infers/[^/]+)?/(?:playground/(?P<file>[A-Za-z0-9_.-]+))?$")
_BARE_PREFIX = re.compile(r"^/v1/infers/[^/]+$")


@lru_cache(maxsize=1)
def static_files() -> dict[str, bytes]:
    """Every file of static/ by name, read once (a few tens of KB)."""
    root = resources.files(__package__) / "static"
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file() and f.name.endswith(tuple(_TYPES))}


class PlaygroundMiddleware:
    def __init__(self, app):
        self.app = app
        static_files()  # fail at start, not at the first visit, if the package data is missing

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if _BARE_PREFIX.match(path):
            # The path as sent (still percent-encoded): a decoded id could hold what no header may.
            raw = scope.get("raw_path") or path.encode("utf-8")
            await _respond(send, 308, b"", [(b"location", raw.split(b"?", 1)[0] + b"/")])
            return
        m = _PAGE.match(path)
        name = None
        # The page only at its own path: under playground/ its relative URLs would point wrong.
        if m and m.group("file") != "index.html":
            name = m.group("file") or "index.html"
        body = static_files().get(name) if name else None
        if body is None:
            await self.app(scope, receive, send)
            return
        suffix = name[name.rfind("."):]
        headers = [(b"content-type", _TYPES[suffix].encode()), (b"x-content-type-options", b"nosniff"),
                   (b"cache-control", b"no-cache"), (b"referrer-policy", b"no-referrer")]
        if suffix == ".html":
            headers.append((b"content-security-policy", _CSP.encode()))
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, headers, len(body))


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                   length: int | None = None) -> None:
    headers = headers + [(b"content-length", str(len(body) if length is None else length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
