#!/usr/bin/env python3
"""Benchmark output: reads stdin in big chunks, counts lines and bytes, acks checkpoints at
once (dstream mode) and reports on stderr as JSON: lines, bytes, first/last byte times, and,
for stamped envelopes, latencies. Standard library only."""

import json
import os
import sys
import time

PEER = os.environ.get("BENCH_MODE") == "peer"
LATENCY = os.environ.get("BENCH_LATENCY") == "1"
TOKEN = b'{"checkpoint":'
fd = sys.stdin.fileno()
out = sys.stdout.fileno()
pending = b""
if not PEER:
    while b"\n" not in pending:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
    _, _, pending = pending.partition(b"\n")  # the command envelope
    os.write(out, b'{"status":"ready","verbs":["run"],"features":["ack"]}\n')
lines = nbytes = 0
first = last = 0
latencies = []
tail = b""
while True:
    data = pending or os.read(fd, 1 << 20)
    pending = b""
    if not data:
        break
    now = time.time_ns()
    first = first or now
    last = now
    nbytes += len(data)
    lines += data.count(b"\n")
    if LATENCY:
        start = 0
        while (i := data.find(b'"t":', start)) >= 0:
            j = data.find(b",", i)
            stamp = int(data[i + 4 : j])
            if stamp:
                latencies.append(now - stamp)
            start = j
    if not PEER:
        chunk = tail + data
        cut = chunk.rfind(b"\n") + 1
        complete, tail = chunk[:cut], chunk[cut:]
        if TOKEN in complete:
            acks = []
            start = 0
            while (i := complete.find(TOKEN, start)) >= 0:
                j = complete.find(b"\n", i)
                acks.append(b'{"ack":' + complete[i + len(TOKEN) : j - 1] + b"}\n")
                start = j
            os.write(out, b"".join(acks))
report = {"lines": lines, "bytes": nbytes, "first_ns": first, "last_ns": last}
if latencies:
    report["latencies_ns"] = latencies
sys.stderr.write("BENCH " + json.dumps(report) + "\n")
