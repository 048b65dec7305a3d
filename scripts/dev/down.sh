#!/usr/bin/env bash
# Stop the development/test services that scripts/dev/up.sh started (for developers; CI does not
# use it).  Data (registry storage, Azurite data, the PostgreSQL cluster, images) is kept.
#
#   scripts/dev/down.sh [azurite|registry|postgres|docker|all ...]   (default: all; dockerd last)
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORDER=(azurite registry postgres docker)
declare -A WANT=()
(( $# == 0 )) && set -- all
for arg in "$@"; do
    case "$arg" in
        all) for s in "${ORDER[@]}"; do WANT[$s]=1; done ;;
        azurite|registry|postgres|docker) WANT[$arg]=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) die "unknown service: $arg (expected one of: ${ORDER[*]} all)" ;;
    esac
done

for s in "${ORDER[@]}"; do
    [[ -n "${WANT[$s]:-}" ]] || continue
    case "$s" in
        azurite)
            stop_pidfile azurite 30 azurite.js
            ;;
        registry)
            stop_pidfile registry-auth 15 docker-registry
            stop_pidfile registry 15 docker-registry
            ;;
        postgres)
            if have pg_ctlcluster && pg_ctlcluster 15 main status >/dev/null 2>&1; then
                log "stopping postgres (pg_ctlcluster 15 main stop)"
                pg_ctlcluster 15 main stop -m fast || log "pg_ctlcluster 15 main stop failed"
            fi
            ;;
        docker)
            if pid_alive dockerd; then
                # dockerd stops its containers (10 s grace each) and its containerd first.
                stop_pidfile dockerd 90 dockerd
            elif have docker && docker info >/dev/null 2>&1; then
                log "a docker engine answers but was not started by these scripts; leaving it running"
            fi
            ;;
    esac
done
log "down"
