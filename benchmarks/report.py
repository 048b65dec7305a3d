"""Render benchmarks/results/*.json into docs/performance.md."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(results: Path, target: Path) -> None:
    data = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    target.write_text(json.dumps(data, indent=1))
