"""How providers run: local processes (local.py), containers (container.py, on the engine client in
docker.py), a fake for tests (fake.py)."""

from dstream.runtime.base import ProviderProcess, ProviderSpec, Runtime, StderrSink

__all__ = ["ProviderProcess", "ProviderSpec", "Runtime", "StderrSink"]
