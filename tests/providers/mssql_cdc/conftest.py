"""A real SQL Server for the mssql-marked tests, through testcontainers.

SQL Server is published only as an MCR image (``mcr.microsoft.com/mssql/server``), which the
development machines cannot pull; .github/workflows/mssql.yml can, and sets
DSTREAM_TEST_MSSQL=1. Without it the tests skip, saying so, before anything is pulled.
The container runs SQL Server Agent (``MSSQL_AGENT_ENABLED=true``): the CDC capture and
cleanup jobs are Agent jobs. Each test gets its own database (CDC state is per database).

testcontainers 4.15 (``testcontainers.community.mssql.SqlServerContainer``) waits for the
server with ``sqlcmd`` inside the container (an ExecWaitStrategy) for testcontainers'
default 120 s; :class:`Sql2022` waits up to ``STARTUP`` seconds instead, and the tests'
pytest timeouts (test_integration.py) are longer than that plus the test itself, because
the first test's timeout also covers this fixture's start-up.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# Pinned: a CU tag, never :latest, so every run meets the same server build.
MSSQL_IMAGE = os.environ.get("DSTREAM_MSSQL_IMAGE", "mcr.microsoft.com/mssql/server:2022-CU14-ubuntu-22.04")
SKIP_REASON = (
    f"needs SQL Server, published only as the MCR image {MSSQL_IMAGE}, which this machine cannot pull "
    f"(MCR is unreachable here); runs in .github/workflows/mssql.yml, which sets DSTREAM_TEST_MSSQL=1"
)
PASSWORD = "Dstream-Test-Pw-1234"
STARTUP = 240.0  # seconds SQL Server (with Agent) may take to accept sqlcmd in the container


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    password: str
    driver: str

    def connection_string(self, database: str = "master", user: str = "sa", password: str | None = None) -> str:
        return (
            f"DRIVER={{{self.driver}}};SERVER={self.host};PORT={self.port};DATABASE={database};UID={user};"
            f"PWD={password or self.password};TDS_Version=7.4;ClientCharset=UTF-8"
        )

    def connect(self, database: str = "master", user: str = "sa", password: str | None = None) -> Any:
        import pyodbc

        return pyodbc.connect(self.connection_string(database, user, password), autocommit=True, timeout=30)


def _container() -> Any:
    from testcontainers.community.mssql import SqlServerContainer
    from testcontainers.core.wait_strategies import ExecWaitStrategy

    class Sql2022(SqlServerContainer):  # type: ignore[misc]
        """testcontainers' SqlServerContainer with a start-up wait we choose."""

        def _connect(self) -> None:
            # one sqlcmd (tools18 first): an image shipping both mssql-tools and mssql-tools18 would otherwise
            # pass two paths to one sqlcmd and never get ready (review 3, row 14)
            command = (
                "for s in /opt/mssql-tools18/bin/sqlcmd /opt/mssql-tools/bin/sqlcmd; do [ -x $s ] && break; done;"
                ' "$s" -U "$SQLSERVER_USER" -P "$SA_PASSWORD" -Q \'SELECT 1\' -C'
            )
            ExecWaitStrategy(["bash", "-c", command]).with_startup_timeout(int(STARTUP)).wait_until_ready(self)

    container = Sql2022(MSSQL_IMAGE, password=PASSWORD)
    container.with_env("MSSQL_AGENT_ENABLED", "true").with_env("MSSQL_PID", "Developer")
    return container


@pytest.fixture(scope="session")
def mssql() -> Iterator[Server]:
    if os.environ.get("DSTREAM_TEST_MSSQL") != "1":
        pytest.skip(SKIP_REASON)
    with _container() as container:
        host = container.get_container_host_ip()
        yield Server(
            "127.0.0.1" if host in ("localhost", "::1") else host,
            int(container.get_exposed_port(1433)),
            PASSWORD,
            os.environ.get("DSTREAM_TEST_MSSQL_DRIVER", "FreeTDS"),
        )


class Database:
    """A fresh database on the test server, dropped afterwards (CDC jobs included)."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name
        self.conn = server.connect(name)
        self.logins: list[str] = []

    @property
    def connection_string(self) -> str:
        return self.server.connection_string(self.name)

    def execute(self, sql: str, *params: Any) -> list[Any]:
        cur = self.conn.cursor()
        cur.execute(sql, *params)
        rows: list[Any] = []
        while True:
            if cur.description is not None:
                rows = cur.fetchall()
            if not cur.nextset():
                break
        cur.close()
        return rows

    def value(self, sql: str, *params: Any) -> Any:
        rows = self.execute(sql, *params)
        return rows[0][0] if rows else None

    def enable_table(self, table: str, instance: str | None = None, role: str | None = None) -> None:
        if not self.value("SELECT is_cdc_enabled FROM sys.databases WHERE database_id = DB_ID()"):
            self.execute("EXEC sys.sp_cdc_enable_db")
        self.execute(
            "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = ?, @role_name = ?,"
            " @capture_instance = ?",
            table,
            role,
            instance or f"dbo_{table}",
        )

    def captured(self, instance: str) -> int:
        """Rows in the instance's change table: what the capture job has harvested so far."""
        return int(self.value(f"SELECT COUNT(*) FROM cdc.[{instance}_CT]"))  # noqa: S608 - test names

    def login(self, name: str, grants: list[str]) -> str:
        """A login and database user with only ``grants`` (run as sa in this database); its connection string."""
        password = f"Pw-{uuid.uuid4().hex[:12]}-x1"
        self.execute(f"CREATE LOGIN [{name}] WITH PASSWORD = N'{password}', CHECK_POLICY = OFF")
        self.logins.append(name)
        self.execute(f"CREATE USER [{name}] FOR LOGIN [{name}]")
        for grant in grants:
            self.execute(grant.replace("{user}", f"[{name}]"))
        return self.server.connection_string(self.name, name, password)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@pytest.fixture
def database(mssql: Server) -> Iterator[Database]:
    name = f"dst_{uuid.uuid4().hex[:10]}"
    admin = mssql.connect()
    admin.cursor().execute(f"CREATE DATABASE [{name}]")
    db = Database(mssql, name)
    try:
        yield db
    finally:
        db.close()
        with contextlib.suppress(Exception):
            cleanup = mssql.connect(name)
            cleanup.cursor().execute(
                "IF (SELECT is_cdc_enabled FROM sys.databases WHERE name = DB_NAME()) = 1 EXEC sys.sp_cdc_disable_db"
            )
            cleanup.close()
        with contextlib.suppress(Exception):
            admin.cursor().execute(
                f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{name}]"
            )
        for login in db.logins:
            with contextlib.suppress(Exception):
                admin.cursor().execute(f"DROP LOGIN [{login}]")
        admin.close()
