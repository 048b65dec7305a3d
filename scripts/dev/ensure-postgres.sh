#!/usr/bin/env bash
# Make sure PostgreSQL 15 (Debian, cluster "15 main") with wal2json answers on 127.0.0.1:5432,
# configured for logical decoding, with a role and a test database:
#
#   postgresql://dstream:dstream@127.0.0.1:5432/dstream_test
#
# Role dstream: LOGIN REPLICATION SUPERUSER, password dstream (scram-sha-256 over 127.0.0.1).
# Settings (conf.d/dstream-dev.conf): wal_level=logical, max_replication_slots and
# max_wal_senders 32, listen_addresses='127.0.0.1', port 5432.
# Started with pg_ctlcluster (no systemd).  Server log: /var/log/postgresql/postgresql-15-main.log,
# linked as $DSTREAM_DEV_HOME/logs/postgres.log.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
PG_ROLE=dstream
PG_PASSWORD=dstream
PG_DB=dstream_test
DSN="postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
START_TIMEOUT="${DSTREAM_POSTGRES_START_TIMEOUT:-60}"
CONF_ROOT="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
WAL2JSON_SO="/usr/lib/postgresql/$PG_VERSION/lib/wal2json.so"
SERVER_LOG="/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"

# ready: the role can log in over TCP with its password, and logical decoding is on.
ready() {
    have psql && [[ -r "$WAL2JSON_SO" ]] &&
        [[ "$(PGCONNECT_TIMEOUT=5 psql "$DSN" -XAtqc 'show wal_level' 2>/dev/null)" == logical ]]
}

# as_postgres CMD...: run as the postgres OS user, over the unix socket (peer auth).
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

psql_admin() {
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

cluster_exists() { [[ -f "$CONF_ROOT/postgresql.conf" && -d "/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER" ]]; }

cluster_running() { pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; }

if ready; then
    log "postgres answers at $DSN (wal_level=logical, wal2json installed)"
    exit 0
fi

lock_service postgres
if ready; then
    log "postgres answers at $DSN (wal_level=logical, wal2json installed)"
    exit 0
fi

apt_install_missing "postgresql-$PG_VERSION" "postgresql-$PG_VERSION-wal2json" "postgresql-client-$PG_VERSION"
[[ -r "$WAL2JSON_SO" ]] || die "wal2json is not installed ($WAL2JSON_SO missing)"

if ! cluster_exists; then
    log "creating cluster $PG_VERSION $PG_CLUSTER (pg_createcluster)"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" >>"$SERVER_LOG.create" 2>&1 ||
        { show_log "$SERVER_LOG.create" 20; die "pg_createcluster $PG_VERSION $PG_CLUSTER failed"; }
fi
mkdir -p /var/log/postgresql
ln -sfn "$SERVER_LOG" "$(log_file postgres)"

# --- configuration ----------------------------------------------------------------------------
need_restart=0
need_reload=0

grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf.d'" "$CONF_ROOT/postgresql.conf" ||
    printf "\ninclude_dir = 'conf.d'\t# added by dstream scripts/dev/ensure-postgres.sh\n" >>"$CONF_ROOT/postgresql.conf"
mkdir -p "$CONF_ROOT/conf.d"
conf_file="$CONF_ROOT/conf.d/dstream-dev.conf"
conf_text="# dstream development/test settings (scripts/dev/ensure-postgres.sh); changes need a restart.
listen_addresses = '127.0.0.1'
port = $PG_PORT
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
"
if [[ "$(cat "$conf_file" 2>/dev/null)" != "${conf_text%$'\n'}" ]]; then
    log "writing $conf_file"
    printf '%s' "$conf_text" >"$conf_file"
    chown postgres:postgres "$conf_file"
    need_restart=1
fi

# Password auth over loopback for the dstream role, ahead of every other host rule.
hba="$CONF_ROOT/pg_hba.conf"
hba_marker="# dstream-dev (scripts/dev/ensure-postgres.sh)"
if ! grep -qF "$hba_marker" "$hba"; then
    log "adding scram-sha-256 host rules for $PG_ROLE to $hba"
    {
        printf '%s\n' "$hba_marker"
        printf 'host    all             %-15s 127.0.0.1/32            scram-sha-256\n' "$PG_ROLE"
        printf 'host    replication     %-15s 127.0.0.1/32            scram-sha-256\n' "$PG_ROLE"
        cat "$hba"
    } >"$hba.dstream.tmp"
    chown postgres:postgres "$hba.dstream.tmp"
    chmod 640 "$hba.dstream.tmp"
    mv -f "$hba.dstream.tmp" "$hba"
    need_reload=1
fi

# --- start --------------------------------------------------------------------------------------
# No systemd-tmpfiles here: the socket directory may be missing after a reboot.
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

pg_start() {
    log "pg_ctlcluster $PG_VERSION $PG_CLUSTER $1"
    # Own session and no inherited descriptors, so the server survives the caller (make, a CI
    # step) exiting and holds none of its pipes.
    if ! detach pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" "$1" </dev/null >>"$SERVER_LOG" 2>&1; then
        show_log "$SERVER_LOG"
        die "pg_ctlcluster $PG_VERSION $PG_CLUSTER $1 failed (log $SERVER_LOG)"
    fi
}

if cluster_running; then
    if (( need_restart )); then
        pg_start restart
    elif (( need_reload )); then
        pg_start reload
    fi
else
    pg_start start
fi

if ! wait_for "$START_TIMEOUT" "pg_isready -h 127.0.0.1 -p $PG_PORT" pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    show_log "$SERVER_LOG"
    die "postgres did not answer on 127.0.0.1:$PG_PORT within ${START_TIMEOUT}s (log $SERVER_LOG)"
fi

# ALTER SYSTEM settings (postgresql.auto.conf) win over conf.d: make sure the effective values
# are right, and fix them there if not.
settings="$(psql_admin -At -c "select current_setting('wal_level') || ' ' ||
    current_setting('max_replication_slots') || ' ' || current_setting('max_wal_senders')")"
read -r wal_level slots senders <<<"$settings"
if [[ "$wal_level" != logical ]] || (( slots < 20 || senders < 20 )); then
    log "effective settings are wal_level=$wal_level max_replication_slots=$slots max_wal_senders=$senders (postgresql.auto.conf overrides?); fixing with ALTER SYSTEM"
    psql_admin -c "alter system set wal_level = 'logical'" \
        -c "alter system set max_replication_slots = 32" -c "alter system set max_wal_senders = 32"
    pg_start restart
    wait_for "$START_TIMEOUT" "pg_isready -h 127.0.0.1 -p $PG_PORT" pg_isready -q -h 127.0.0.1 -p "$PG_PORT" ||
        { show_log "$SERVER_LOG"; die "postgres did not come back after the restart"; }
fi

# --- role and database (idempotent) ---------------------------------------------------------------
psql_admin >/dev/null <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE LOGIN REPLICATION SUPERUSER PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_ROLE LOGIN REPLICATION SUPERUSER PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')
\gexec
SQL

# --- verify: password login over TCP and a wal2json logical replication slot -------------------------
out="$(PGCONNECT_TIMEOUT=10 psql "$DSN" -X -q -v ON_ERROR_STOP=1 -At \
    -c "select slot_name from pg_create_logical_replication_slot('dstream_setup_check', 'wal2json')" \
    -c "select pg_drop_replication_slot('dstream_setup_check')" 2>&1)" ||
    die "verification failed on $DSN: $out"
ready || die "postgres is up but $DSN does not report wal_level=logical"
log "postgres $(psql "$DSN" -XAtqc 'show server_version') answers at $DSN (wal2json slot create/drop OK)"
