"""Time GET requests to one URL from a plain (unpatched) child process.

``python -m bench.http_probe URL COUNT`` makes COUNT requests one after
another, each on a new connection as a health checker does, and prints
one JSON line: the status codes seen and every latency in seconds.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def probe(url: str, count: int) -> dict:
    parts = urlsplit(url)
    latencies, statuses = [], {}
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        response.read()
        connection.close()
        latencies.append(time.perf_counter() - started)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    return {"statuses": statuses, "latencies": latencies}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]))))
