"""The errors every CDC provider raises, defined once (each engine translates its driver's
errors into them in its own ``errors`` module).

::

    ActionableError          (dstream.sdk) shown to the user as its message, one line
     └── CdcError            a problem with the source or its set-up; the message says what to do
          └── ConnectionLost the server went away: retried with backoff, then a CdcError
"""

from __future__ import annotations

from dstream.sdk.errors import ActionableError


class CdcError(ActionableError):
    """A problem with the source database or its set-up; the message says how to fix it."""


class ConnectionLost(CdcError):
    """The connection failed or was cut, or the statement may succeed when retried: the
    provider reconnects with backoff (within its reconnect_timeout) before giving up."""
