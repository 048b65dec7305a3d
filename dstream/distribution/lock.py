"""``dstream.lock``: the digest each ``provider_ref`` resolved to, like Terraform's lock file.

Format (HCL, one block per reference; commit it with the task file)::

    provider "127.0.0.1:5000/dstream/counter-input-provider:0.1.0" {
      digest    = "sha256:…"
      kind      = "image"
      locked_at = "2026-11-23T01:00:00Z"
    }
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dstream import private
from dstream.distribution import digests
from dstream.distribution.reference import parse
from dstream.errors import DistributionError

if TYPE_CHECKING:
    from pathlib import Path

LOCK_FILE = "dstream.lock"
KINDS = ("image", "artifact")
_HEADER = (
    "# dstream.lock: the registry digest of every provider_ref, written by `dstream lock`.\n"
    "# Commit it. `dstream run` refuses to start when a registry serves a different digest\n"
    "# for a locked reference (accept the new one with --update-lock or `dstream lock`).\n"
)


@dataclass(frozen=True)
class Locked:
    digest: str
    kind: str
    locked_at: str


class LockFile:
    def __init__(self, path: Path, entries: dict[str, Locked] | None = None) -> None:
        self.path = path
        self.entries = entries or {}
        # Both providers of a run resolve in worker threads and may each record a digest.
        self._mutex = threading.RLock()

    @classmethod
    def load(cls, path: Path) -> LockFile:
        if not path.exists():
            return cls(path)
        from dstream.config.evaluate import EvalError, Evaluator
        from dstream.config.hcl import parse
        from dstream.errors import ConfigError

        try:
            body = parse(path.read_text(), str(path))
            evaluator = Evaluator({}, {})
            entries = {}
            for block in body.blocks_of("provider"):
                values = {name: evaluator.eval(attr.expr) for name, attr in block.body.attributes.items()}
                entries[block.labels[0]] = _entry(
                    block.labels[0], values["digest"], values.get("kind", "image"), str(values.get("locked_at", ""))
                )
        except (ConfigError, EvalError, DistributionError, KeyError, IndexError) as exc:
            raise DistributionError(
                f"{path} is not a valid lock file ({exc}); delete it and run `dstream lock`"
            ) from None
        return cls(path, entries)

    def get(self, ref: str) -> Locked | None:
        return self.entries.get(ref)

    def set(self, ref: str, digest: str, kind: str) -> None:
        entry = _entry(ref, digest, kind, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self._mutex:
            self.entries[ref] = entry

    def update(self, ref: str, digest: str, kind: str) -> None:
        """Set one entry and write the file, atomically with respect to other threads."""
        with self._mutex:
            self.set(ref, digest, kind)
            self.save()

    def save(self) -> None:
        with self._mutex:  # one writer at a time: the temporary file's name is shared
            blocks = []
            for ref in sorted(self.entries):
                entry = self.entries[ref]
                blocks.append(
                    f'provider "{ref}" {{\n'
                    f'  digest    = "{entry.digest}"\n'
                    f'  kind      = "{entry.kind}"\n'
                    f'  locked_at = "{entry.locked_at}"\n'
                    "}\n"
                )
            # Meant to be committed beside the task file: readable as any source file.
            private.write_atomically(self.path, _HEADER + "\n" + "\n".join(blocks), mode=0o644)


def _entry(ref: str, digest: object, kind: object, locked_at: str) -> Locked:
    """A lock entry for a valid reference, whose digest is ``sha256:<64 hex>`` and whose kind
    is known: nothing else is written to, or believed from, the file."""
    parse(ref)  # a reference is also the label the file quotes: no quote, brace or newline in it
    if kind not in KINDS:
        raise DistributionError(f"{ref}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return Locked(digests.checked(digest, f"{ref}: the locked digest"), str(kind), locked_at)
