"""Which config values are secrets, and the credentials inside connection strings.

A value is a secret when its key looks like a credential (``password``, ``dsn``, ``token``
…). Whatever its key, the credentials a connection string embeds are secrets too:

- ``Key=Value;`` pairs (ADO.NET, Azure Storage/Service Bus): ``Password``, ``Pwd``,
  ``AccountKey``, ``SharedAccessKey``, and the ``sig`` of a ``SharedAccessSignature``;
- an ODBC braced value, ``Pwd={p;a}}ss}``, where ``}}`` stands for ``}`` ([MS-ODBCSTR]
  2.1.2, "ODBC Connection String Format": a value in braces may hold ``;`` and doubles ``}``);
- a URI's ``user:password@`` (also as the ``user:password`` pair a Basic header encodes)
  and its ``?password=``/``sig=``/``token=`` query values, up to the next ``&``.
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|api_?key|access_?key|account_?key|credential|"
    r"connection_?string|conn_?str|dsn|sas)",
    re.IGNORECASE,
)
_PAIR = re.compile(
    r"(?i)(?:^|[;?&\s])\s*(?:password|pwd|passwd|accountkey|sharedaccesskey|sig|token|secret)\s*=\s*"
    r"(?:\{(?P<braced>(?:[^}]|\}\})*)\}|(?P<plain>[^;&\s]+))"
)
_USERINFO = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{0,31}://(?P<user>[^\s:/@]*):(?P<password>[^\s/@]+)@")


def secret_values(config: Any, key: str = "") -> set[str]:
    """String values under credential-like keys, and the credentials inside any string."""
    found: set[str] = set()
    if isinstance(config, dict):
        for k, v in config.items():
            found |= secret_values(v, str(k))
    elif isinstance(config, list):
        for v in config:
            found |= secret_values(v, key)
    elif isinstance(config, str):
        if key and SECRET_KEY.search(key):
            found.add(config)
        found |= credential_parts(config)
    return found


def credential_parts(value: str) -> set[str]:
    """The credentials a DSN or connection string embeds (empty for anything else)."""
    parts: set[str] = set()
    for match in _PAIR.finditer(value):
        if match["braced"] is not None:
            parts.add(match["braced"])
            parts.add(match["braced"].replace("}}", "}"))
        else:
            parts.add(match["plain"])
    for match in _USERINFO.finditer(value):
        parts.add(match["password"])
        if match["user"]:
            parts.add(f"{match['user']}:{match['password']}")  # what a Basic header encodes
    return {p for p in parts if p}
