#!/usr/bin/env python3
"""Benchmark input: emits `count` envelopes of about `size` bytes as fast as it can, with a
checkpoint every `checkpoint_every`. Standard library only, so it is cheap and identical
in every setting (dstream relay, docker pipe, OS pipe). With rate > 0 it paces itself and
stamps each envelope with the time it was written (for latency)."""

import json
import os
import sys
import time

PEER = os.environ.get("BENCH_MODE") == "peer"
command = json.loads(sys.stdin.readline())
cfg = command.get("config") or {}
count = int(cfg.get("count", 1_000_000))
size = int(cfg.get("size", 500))
every = int(cfg.get("checkpoint_every", 1000))
rate = float(cfg.get("rate", 0))
start = int((command.get("checkpoint") or {}).get("value", 0))
out = sys.stdout.fileno()


def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]


write(b'{"status":"ready","verbs":["run"],"features":[]}\n')
head = b'{"data":{"value":%d,"t":%d,"pad":"'
tail = b'"},"metadata":{"Sequence":%d}}\n'
pad = b"x" * max(0, size - len(head % (0, 0)) - len(tail % 0) - 8)
template = head + pad + tail
n = start
if rate:
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while n < count:
        n += 1
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        line = template % (n, time.time_ns(), n)
        if n % every == 0:
            line += b'{"checkpoint":{"value":%d}}\n' % n
        write(line)
else:
    while n < count:
        upto = min(n + every, count)
        block = b"".join([template % (i, 0, i) for i in range(n + 1, upto + 1)])
        write(block + b'{"checkpoint":{"value":%d}}\n' % upto)
        n = upto
