"""``python -m service.healthcheck``: exit 0 when the local server is ready (Docker's HEALTHCHECK)."""

from __future__ import annotations

import sys
import urllib.request

from ..settings import get_settings


def main() -> int:
    url = f"http://127.0.0.1:{get_settings().port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as e:  # refused, timed out, or 503 while loading
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
