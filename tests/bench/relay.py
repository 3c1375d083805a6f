"""The SSE relay on the benchmark's 256-chunk stream (see README.md here)."""

from __future__ import annotations

import time
from pathlib import Path

from router.streaming import SSERelay

STREAM = Path(__file__).parent / "stream.sse"


def main() -> None:
    data = STREAM.read_bytes()
    n = 2000
    for size in (len(data), 16384, 4096, 1024):
        began = time.perf_counter()
        for _ in range(n):
            relay = SSERelay("bench-model", "bench-stream", keep_usage=False)
            for i in range(0, len(data), size):
                relay.feed(data[i : i + size])
            relay.flush()
        per = (time.perf_counter() - began) / n * 1e6
        print(f"buffers of {size:6d} bytes: {per:6.1f} µs per stream ({len(data)} bytes)")


if __name__ == "__main__":
    main()
