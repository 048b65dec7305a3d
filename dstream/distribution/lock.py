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
        import hcl2
        from lark.exceptions import LarkError

        try:
            entries = {}
            # python-hcl2 keeps strings quoted, which is what lets dumps() write them back.
            for block in hcl2.loads(path.read_text()).get("provider", []):
                for label, values in block.items():
                    ref = _unquote(label)
                    entries[ref] = _entry(
                        ref,
                        _unquote(values["digest"]),
                        _unquote(values.get("kind", '"image"')),
                        _unquote(values.get("locked_at", '""')),
                    )
        except (LarkError, DistributionError, KeyError, TypeError, AttributeError, ValueError) as exc:
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
        import hcl2

        with self._mutex:  # one writer at a time
            document = {
                "provider": [
                    {
                        _quote(ref): {
                            "digest": _quote(entry.digest),
                            "kind": _quote(entry.kind),
                            "locked_at": _quote(entry.locked_at),
                            "__is_block__": True,  # python-hcl2's mark of a block (not an object value)
                        }
                    }
                    for ref, entry in sorted(self.entries.items())
                ]
            }
            # Meant to be committed beside the task file: readable as any source file.
            private.write_atomically(self.path, _HEADER + "\n" + hcl2.dumps(document), mode=0o644)


def _quote(text: str) -> str:
    """An HCL string literal: references, digests, kinds and times hold no quote or backslash
    (_entry checks every value before it is stored)."""
    return f'"{text}"'


def _unquote(value: object) -> str:
    text = str(value)
    if len(text) < 2 or text[0] != '"' or text[-1] != '"' or '"' in text[1:-1] or "\\" in text:
        raise ValueError(f"{text!r} is not a plain string")
    return text[1:-1]


def _entry(ref: str, digest: object, kind: object, locked_at: str) -> Locked:
    """A lock entry for a valid reference, whose digest is ``sha256:<64 hex>`` and whose kind
    is known: nothing else is written to, or believed from, the file."""
    parse(ref)  # a reference is also the label the file quotes: no quote, brace or newline in it
    if kind not in KINDS:
        raise DistributionError(f"{ref}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return Locked(digests.checked(digest, f"{ref}: the locked digest"), str(kind), locked_at)
