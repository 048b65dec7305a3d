"""Shared test helpers. Markers follow folders: unit/, e2e/ (real local processes),
integration/ (real Docker engine and registry), providers/<name>/ (per provider)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
_FOLDER_MARKERS = {"unit": "unit", "e2e": "e2e", "integration": "integration"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        marker = _FOLDER_MARKERS.get(parts[0])
        if marker:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture
def task_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write an HCL task file into a fresh directory and return its path."""

    def write(text: str, name: str = "dstream.hcl") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], Path]:
    """An executable Python script (run by this interpreter, so it can import dstream)."""

    def make(name: str, body: str) -> Path:
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return path

    return make


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the real ``dstream`` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dstream", *args],
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


AZURITE_DEFAULT = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
PG_DEFAULT = "postgresql://dstream:dstream@127.0.0.1:5432/dstream_test"


def service_unavailable(message: str) -> None:
    """Fail when `make test` promised the service (DSTREAM_REQUIRE_SERVICES=1), else skip."""
    if os.environ.get("DSTREAM_REQUIRE_SERVICES"):
        pytest.fail(message)
    pytest.skip(f"{message} (`make test` starts it)")


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def azurite_connection_string() -> Iterator[str]:
    """Azurite: the one in DSTREAM_TEST_AZURITE (a connection string), else the npm Azurite that
    `make test` starts on 127.0.0.1:10000-10002 (scripts/dev/ensure-azurite.sh), in CI too.

    There is no container fallback: Azurite's image lives on MCR, which the development
    machines cannot pull, and the npm package runs the same emulator everywhere."""
    configured = os.environ.get("DSTREAM_TEST_AZURITE")
    if configured:
        yield configured
        return
    if not (_port_open("127.0.0.1", 10000) and _port_open("127.0.0.1", 10001)):
        service_unavailable("no Azurite on 127.0.0.1:10000-10001")
    yield AZURITE_DEFAULT


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A PostgreSQL 15 with wal2json and wal_level=logical (`make test` starts one)."""
    dsn = os.environ.get("DSTREAM_TEST_PG_DSN", PG_DEFAULT)
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            level = conn.execute("SHOW wal_level").fetchone()
    except Exception as exc:
        service_unavailable(f"no PostgreSQL at {dsn}: {exc}")
    if not level or level[0] != "logical":
        service_unavailable(f"PostgreSQL at {dsn} has wal_level={level}, not logical")
    return dsn
