"""HTTP side of npu-serve: the Starlette app, protocol, auth, moderation and streaming."""
