"""How providers run: local processes (local.py), containers (docker.py), a fake for tests (fake.py)."""

from dstream.runtime.base import ProviderProcess, ProviderSpec, Runtime, StderrSink

__all__ = ["ProviderProcess", "ProviderSpec", "Runtime", "StderrSink"]
