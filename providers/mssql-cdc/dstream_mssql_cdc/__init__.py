"""mssql-cdc-input-provider: SQL Server change data capture (CDC) through pyodbc.

See provider.py for a run, setup.py for the checks before it, snapshot.py for snapshots,
stream.py and windows.py for windows, positions and capture instances, changes.py for the
envelopes, health.py for the capture-job and retention checks, infra.py for
init/plan/status/destroy, sql.py for the SQL text and db.py for the connection (the only
pyodbc user).
"""

from dstream_mssql_cdc.config import MssqlCdcConfig
from dstream_mssql_cdc.errors import CdcError, Purged
from dstream_mssql_cdc.provider import MssqlCdcInputProvider

__all__ = ["CdcError", "MssqlCdcConfig", "MssqlCdcInputProvider", "Purged", "main"]

main = MssqlCdcInputProvider.main
