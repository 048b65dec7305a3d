"""Errors a provider raises on purpose."""

from __future__ import annotations


class ActionableError(Exception):
    """An expected failure whose message says what happened and what to do ("slot X is being
    read by a running task: stop it before destroy"). The host reports it as that one line;
    the traceback only at ``--log-level debug``. Other exceptions are reported the same way,
    prefixed with their type, since their traceback helps the provider's author, not its user.
    """
