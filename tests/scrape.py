"""Reading a running /metrics or /healthz with a real HTTP client (test_progress, test_health)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Optional


def get(url: str) -> tuple[int, str]:
    """Status and body of ``url``; an error status is returned, not raised; (0, reason)
    while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def sample(text: str, metric: str, **labels: str) -> Optional[float]:
    """The value of one sample of a Prometheus exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, rest = key.partition("{")
        if name == metric and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == labels:
            return float(value)
    return None
