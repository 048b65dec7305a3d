"""Fixtures for the postgres-cdc tests: a cleaned-up namespace in the real PostgreSQL
(``pg_dsn``, started by `make test`), a second throwaway cluster with wal_level=replica,
and the provider images for the container tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .helpers import Db

if TYPE_CHECKING:
    from collections.abc import Iterator

PG_BIN = Path(os.environ.get("DSTREAM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


PLUGINS = ("wal2json", "pgoutput")


@pytest.fixture(params=PLUGINS)
def plugin(request: pytest.FixtureRequest) -> str:
    """The output plugin a test's slots are created with (and its tasks name): every test that
    uses ``db`` runs with both. A module whose tests do not depend on it overrides this
    fixture with one value."""
    return str(request.param)


@pytest.fixture
def db(pg_dsn: str, plugin: str) -> Iterator[Db]:
    """Tables, slots, publications and roles named ``tcdc_<random>_…``, all dropped after the test."""
    handle = Db(pg_dsn, f"tcdc_{uuid.uuid4().hex[:8]}", plugin)
    try:
        yield handle
    finally:
        handle.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def replica_level_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with wal_level=replica (logical decoding off)."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (set DSTREAM_TEST_PG_BIN)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start a throwaway cluster")
        as_user = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="dstream-pg-replica-"))
    data = home / "data"
    if as_user:
        shutil.chown(home, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        [*as_user, str(initdb), "-D", str(data), "-U", "dstream", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={home} -c wal_level=replica"
    options += " -c fsync=off -c max_wal_senders=2"
    subprocess.run(
        [*as_user, str(pg_ctl), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://dstream@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)
