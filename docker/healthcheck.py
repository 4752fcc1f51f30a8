"""The images' HEALTHCHECK: exit 0 when GET /health on this container answers 200 (the model is loaded)."""

import os
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/health", timeout=5) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except OSError:
    sys.exit(1)
