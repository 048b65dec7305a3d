"""How a run resolves and starts its providers: pull policy, lock handling, runtimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dstream.distribution.lock import LockFile
    from dstream.runtime.base import Runtime


@dataclass
class LaunchOptions:
    pull: str = "missing"  # missing | always | never
    update_lock: bool = False
    progress: bool = True
    leftovers_checked: bool = False
    runtimes: dict[str, Runtime] = field(default_factory=dict)  # tests inject a fake
    lock: LockFile | None = None  # dstream.lock, loaded on first use and shared by every stage
