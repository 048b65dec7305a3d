"""``dstream check`` for the Azure providers: one quick request with the task's credentials,
no retries (the SDK's default retries take a minute and more to give up on a wrong address),
and the SDK's error as one line that says what did not answer."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, ClientAuthenticationError

from dstream.sdk import ActionableError

if TYPE_CHECKING:
    from collections.abc import Iterator

# Given to the SDK client: fail at once, and within seconds, rather than retry.
QUICK = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}


@contextlib.contextmanager
def answered(what: str) -> Iterator[None]:
    try:
        yield
    except ClientAuthenticationError as exc:
        raise ActionableError(f"{what} refused the credentials in connection_string: {_first_line(exc)}") from None
    except AzureError as exc:
        raise ActionableError(f"{what} did not answer: {_first_line(exc)}") from None


def _first_line(exc: Any) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
