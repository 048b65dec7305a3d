#!/usr/bin/env python3
"""Benchmark transform: copies stdin to stdout in big chunks, so data and checkpoint lines
pass through unchanged and in order (what a transform must do with checkpoints). In dstream
mode it first answers the command envelope with a transform handshake. Standard library only,
the same in every setting (dstream pipeline, docker pipe)."""

import os
import sys

PEER = os.environ.get("BENCH_MODE") == "peer"
fd = sys.stdin.fileno()
out = sys.stdout.fileno()


def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]


pending = b""
if not PEER:
    while b"\n" not in pending:
        chunk = os.read(fd, 65536)
        if not chunk:
            sys.exit(0)
        pending += chunk
    _, _, pending = pending.partition(b"\n")  # the command envelope
    write(b'{"status":"ready","verbs":["run"],"features":["transform"]}\n')
if pending:
    write(pending)
while chunk := os.read(fd, 1 << 20):
    write(chunk)
