#!/usr/bin/env bash
# Bring up the development/test services, idempotently (a fast no-op for what already answers).
#
#   scripts/dev/up.sh [docker|registry|registry-auth|base|azurite|postgres|all ...]   (default: all)
#
#   docker         Docker engine (dockerd, unix:///var/run/docker.sock)   scripts/dev/ensure-docker.sh
#   registry       OCI registry, http://127.0.0.1:5000, no auth           scripts/dev/ensure-registry.sh
#   registry-auth  + htpasswd registry, http://127.0.0.1:5001             scripts/dev/ensure-registry.sh --auth
#   base           image dstream-local/python:bookworm                    images/base/build-local-base.sh
#   azurite        Azurite, 127.0.0.1:10000-10002                         scripts/dev/ensure-azurite.sh
#   postgres       PostgreSQL 15 + wal2json, 127.0.0.1:5432               scripts/dev/ensure-postgres.sh
#   odbc           unixODBC + FreeTDS (host packages for pyodbc)         scripts/dev/ensure-odbc.sh
#   all            all of the above
#
# Steps run in the order above whatever the order of the arguments (base needs docker).
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORDER=(docker registry registry-auth base azurite postgres odbc)
declare -A WANT=()
(( $# == 0 )) && set -- all
for arg in "$@"; do
    case "$arg" in
        all) for s in "${ORDER[@]}"; do WANT[$s]=1; done ;;
        docker|registry|registry-auth|base|azurite|postgres|odbc) WANT[$arg]=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown service: $arg (expected one of: ${ORDER[*]} all)" ;;
    esac
done
# registry-auth also brings up the plain one (same script).
[[ -n "${WANT[registry-auth]:-}" ]] && unset 'WANT[registry]'

dev="$DSTREAM_REPO_ROOT/scripts/dev"
t_all="$(now_ms)"
summary=()
for s in "${ORDER[@]}"; do
    [[ -n "${WANT[$s]:-}" ]] || continue
    case "$s" in
        docker) cmd=("$dev/ensure-docker.sh") ;;
        registry) cmd=("$dev/ensure-registry.sh") ;;
        registry-auth) cmd=("$dev/ensure-registry.sh" --auth) ;;
        base) cmd=("$DSTREAM_REPO_ROOT/images/base/build-local-base.sh") ;;
        azurite) cmd=("$dev/ensure-azurite.sh") ;;
        postgres) cmd=("$dev/ensure-postgres.sh") ;;
        odbc) cmd=("$dev/ensure-odbc.sh") ;;
    esac
    log "== $s"
    t="$(now_ms)"
    if ! bash "${cmd[@]}"; then
        die "$s failed after $(elapsed "$t") (see the messages above; logs in $DSTREAM_DEV_LOGS)"
    fi
    summary+=("$s $(elapsed "$t")")
done
log "up in $(elapsed "$t_all"): $(IFS=,; printf '%s' "${summary[*]}" | sed 's/,/, /g')"
