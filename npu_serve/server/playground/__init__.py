"""The playground: a chat and a live dashboard served by the server itself (README: Playground).

`static/` holds the page (plain HTML, CSS and JS; no build step, nothing from a CDN); `pages.py`
serves it. `--no-playground` leaves it out.
"""

from npu_serve.server.playground.pages import PlaygroundMiddleware, static_files

__all__ = ["PlaygroundMiddleware", "static_files"]
