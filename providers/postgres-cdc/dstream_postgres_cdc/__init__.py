"""postgres-cdc-input-provider: PostgreSQL change data capture through logical decoding
(pgoutput or wal2json).

See provider.py for positions, heartbeats and polling, snapshot.py and incremental.py for
snapshots, checkpoint.py for the checkpoint, source.py for the slots, decode.py for the
envelopes (fed by pgoutput.py and wal2json.py), infra.py for init/plan/status/destroy.
"""

from dstream_postgres_cdc.config import PostgresCdcConfig
from dstream_postgres_cdc.errors import CdcError
from dstream_postgres_cdc.provider import PostgresCdcInputProvider

__all__ = ["CdcError", "PostgresCdcConfig", "PostgresCdcInputProvider", "main"]

main = PostgresCdcInputProvider.main
