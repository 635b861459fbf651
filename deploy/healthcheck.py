"""The container's HEALTHCHECK: exit 0 when `tunelab serve` answers GET /health with 200, else 1.

python:3.11-slim has no curl or wget, so the standard library asks. The port is TUNELAB_PORT (default 8000).
"""
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('TUNELAB_PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=float(os.environ.get("TUNELAB_HEALTH_TIMEOUT", "4"))) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # refused, timed out, 503: unhealthy, and say why in `docker inspect`
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
