"""Keep secrets out of logs and error messages.

A secret leaks in more shapes than the one the task file holds, so each is masked in the
forms it travels in: as written, URL-decoded and URL-encoded (a DSN's ``p%40ss`` is logged
as ``p@ss``), JSON-escaped (a provider's JSON log line), base64 at each of the three byte
alignments (a Basic ``Authorization`` header, a token inside a longer blob), and each line
of a multi-line secret (a PEM key logged line by line).

A short or guessable secret (a development password such as ``dstream``) would mask every
ordinary word that happens to equal it, so it is masked only where it stands as a secret:
after ``password=``/``pwd=``/``"password": "``, in a URL's ``user:SECRET@``. A secret is
masked everywhere once it is long enough to be unguessable (:func:`is_strong`). Whatever
the secrets, the value after ``password=``, ``pwd=``, ``sig=``, ``AccountKey=`` and
``SharedAccessKey=`` and a URL's password are masked.

Text is redacted *before* it is cut for display (:meth:`Redactor.shorten`), and a stream
cut at a buffer boundary is cut where no secret straddles it (:meth:`Redactor.safe_cut`).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK = "***"
MIN_SECRET = 4  # shorter values are never treated as secrets (they would mask noise)
STRONG_LENGTH = 8
_KEYS = r"password|passwd|pwd|secret|token|sig|accountkey|sharedaccesskey|api_?key|access_?key"
# Values that are secret whoever wrote them: connection-string keys and URL passwords.
_ALWAYS = re.compile(
    r"(?i)(?P<pre>\b(?:password|passwd|pwd|sig|accountkey|sharedaccesskey)\s*=\s*)"
    r"(?P<value>\{(?:[^}]|\}\})*\}?|[^;&\s\"'<>]+)"
    r"|(?P<url>\b[a-z][a-z0-9+.-]{0,31}://[^\s:/@]*:)(?P<upass>[^\s/@]+)(?=@)"
)
_TRAILING_VALUE = re.compile(rf"(?i)(?P<pre>\b(?:{_KEYS})[\"']?\s*[=:]\s*[\"'{{]?)\S+$")
_PEM_FRAME = re.compile(r"^-----(BEGIN|END) [A-Z0-9 ]+-----$")


def is_strong(secret: str) -> bool:
    """Long and varied enough that an equal ordinary word is unlikely: masked everywhere.

    At least 8 characters mixing two kinds (lower, upper, digit, other) with five distinct
    characters, or at least 16 characters of any kind.
    """
    if len(secret) >= 16:
        return True
    kinds = sum(
        any(test(c) for c in secret) for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    return len(secret) >= STRONG_LENGTH and kinds >= 2 and len(set(secret)) >= 5


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend only on ``data``, at each byte alignment, so the
    secret is found inside any longer base64 text (as GitHub Actions masks secrets)."""
    found = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode().rstrip("=")
        start = -(-8 * offset // 6)  # the first character with no bit of the padding
        end = 8 * (offset + len(data)) // 6  # the characters fully inside data
        core = encoded[start:end]
        if len(core) >= STRONG_LENGTH:
            found.add(core)
            found.add(core.replace("+", "-").replace("/", "_"))  # base64url
    return found


def forms(secret: str) -> set[str]:
    """Every form a secret is masked in (see the module docstring)."""
    plain = {secret, urllib.parse.unquote(secret), urllib.parse.unquote_plus(secret)}
    plain |= {urllib.parse.quote(s, safe="") for s in list(plain)}
    plain |= {urllib.parse.quote_plus(s, safe="") for s in list(plain)}
    found = set(plain)
    for value in plain:
        found.add(json.dumps(value)[1:-1])
        found.add(json.dumps(value, ensure_ascii=False)[1:-1])
        found |= _base64_cores(value.encode("utf-8", "surrogatepass"))
    return {f for f in found if len(f) >= MIN_SECRET}


def _lines(secret: str) -> set[str]:
    """A multi-line secret and each of its lines (PEM frames excepted: they are not secret)."""
    if "\n" not in secret and "\r" not in secret:
        return {secret}
    lines = {line.strip() for line in re.split(r"\r?\n|\r", secret)}
    return {secret} | {line for line in lines if line and not _PEM_FRAME.match(line)}


def _alternation(values: Iterable[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


class Redactor:
    """Replaces every known secret, in every form it travels in, with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        strong: set[str] = set()
        weak: set[str] = set()
        for secret in {s for s in secrets if s and len(s) >= MIN_SECRET}:
            for part in _lines(secret):
                for form in forms(part):
                    (strong if is_strong(part) else weak).add(form)  # forms are as unguessable as the part
        weak -= strong
        self.longest = max((len(s) for s in strong | weak), default=0)
        self._strong_values = sorted(strong, key=len, reverse=True)
        self._strong = re.compile(_alternation(strong)) if strong else None
        self._weak = (
            re.compile(
                rf"(?i)(?P<pre>(?:\b(?:{_KEYS})[\"']?\s*[=:]\s*[\"'{{]?)|(?:://[^\s:/@]*:))"
                rf"(?P<value>(?-i:{_alternation(weak)}))"
            )
            if weak
            else None
        )

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._strong is not None:
            text = self._strong.sub(MASK, text)
        if self._weak is not None:
            text = self._weak.sub(lambda m: m["pre"] + MASK, text)
        return _ALWAYS.sub(_mask_always, text)

    def lines(self, lines: Iterable[str]) -> list[str]:
        return [self(line) for line in lines]

    def shorten(self, text: str | bytes, limit: int) -> str:
        """Redact, then cut to ``limit`` characters: a cut never shows part of a secret.
        Bytes are decoded as UTF-8 (invalid bytes replaced), as much as the window needs."""
        size = limit + self.longest + 64
        if isinstance(text, bytes):
            whole = len(text) <= 4 * size
            text = text[: 4 * size].decode("utf-8", "replace")
        else:
            whole = len(text) <= size
        window = text[:size]
        redacted = self(window)
        if not whole or len(window) < len(text):
            redacted = self._mask_partial_tail(redacted)
        return redacted[:limit]

    def safe_cut(self, text: str, limit: int) -> int:
        """A position at or before ``limit`` where ``text`` can be cut without splitting a
        secret; ``text`` must run at least :attr:`longest` characters past ``limit``."""
        cut = limit
        start = max(0, limit - self.longest - 64)
        for pattern in (self._strong, self._weak, _ALWAYS):
            if pattern is None:
                continue
            for match in pattern.finditer(text, start, limit + self.longest + 64):
                if match.start() < cut < match.end():
                    cut = match.start()
        return cut

    def _mask_partial_tail(self, text: str) -> str:
        """Mask a trailing prefix of a secret (what followed it was cut off), and a value
        cut off after ``password=`` or ``"token": "``."""
        for value in self._strong_values:
            for size in range(min(len(value) - 1, len(text)), MIN_SECRET - 1, -1):
                if text.endswith(value[:size]):
                    return text[:-size] + MASK
        return _TRAILING_VALUE.sub(lambda m: m["pre"] + MASK, text)


def _mask_always(match: re.Match[str]) -> str:
    if match["pre"] is not None:
        return match["pre"] + MASK
    return match["url"] + MASK


NO_REDACTION = Redactor()
