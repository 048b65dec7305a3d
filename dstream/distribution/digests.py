"""Content digests: what a digest may look like, and what bytes hash to.

A digest is trusted only after it is checked here: ``checked()`` before it becomes part of a
path, a URL or a lock-file entry (``sha256:/../..`` must never reach one), and ``of()`` over
the bytes actually received, never a digest a registry merely claims.
"""

from __future__ import annotations

import hashlib
import re

from dstream.errors import DistributionError

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A Docker-Content-Digest header may name another algorithm (the OCI image spec registers
# sha256 and sha512); it is checked with its own algorithm, then sha256 is what dstream uses.
_HEADER = re.compile(r"(?P<algorithm>sha256|sha512):(?P<hex>[0-9a-f]+)")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def checked(value: object, what: str) -> str:
    """``value`` if it is ``sha256:<64 lowercase hex>``; a DistributionError naming ``what`` otherwise."""
    if not is_digest(value):
        shown = repr(value)[:90]
        raise DistributionError(f"{what}: {shown} is not a digest (expected sha256:<64 lowercase hex digits>)")
    return str(value)


def of(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def header_matches(header: str, data: bytes) -> bool:
    """Whether a ``Docker-Content-Digest`` header names ``data`` (with its own algorithm)."""
    found = _HEADER.fullmatch(header.strip())
    if found is None or len(found["hex"]) != _HEX_LENGTH[found["algorithm"]]:
        return False
    return hashlib.new(found["algorithm"], data).hexdigest() == found["hex"]
