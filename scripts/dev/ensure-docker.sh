#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`.
#
# If DOCKER_HOST is set and answers, nothing is done.  Otherwise Debian's docker.io is installed
# when dockerd is missing, and dockerd is started in the background (own session, survives the
# caller) on unix:///var/run/docker.sock (or on the unix socket DOCKER_HOST names), storage
# driver overlay2 (DSTREAM_DOCKER_STORAGE_DRIVER, e.g. vfs inside a container), no registry mirrors.  Loopback (127.0.0.0/8) is a plain-http ("insecure")
# registry range by default, so 127.0.0.1:5000 works without TLS; this is verified.
#
# Log: $DSTREAM_DEV_HOME/logs/dockerd.log
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT="${DSTREAM_DOCKER_START_TIMEOUT:-90}"

docker_ok() { docker info >/dev/null 2>&1; }

verify_engine() {
    local ver cidrs
    ver="$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
    cidrs="$(docker info --format '{{range .RegistryConfig.InsecureRegistryCIDRs}}{{.}} {{end}}' 2>/dev/null || true)"
    if [[ " $cidrs " != *" 127.0.0.0/8 "* ]]; then
        die "the docker engine does not treat 127.0.0.0/8 as a plain-http registry range (insecure CIDRs: ${cidrs:-none}); 127.0.0.1:5000 would need TLS"
    fi
    log "docker engine ${ver} answers (${DOCKER_HOST:-unix:///var/run/docker.sock}); 127.0.0.0/8 is plain-http allowed"
}

if have docker && docker_ok; then
    verify_engine
    exit 0
fi

lock_service docker
if have docker && docker_ok; then
    verify_engine
    exit 0
fi

# Where should the engine listen?
sock=/var/run/docker.sock
if [[ -n "${DOCKER_HOST:-}" ]]; then
    case "$DOCKER_HOST" in
        unix://*) sock="${DOCKER_HOST#unix://}" ;;
        *) die "DOCKER_HOST=$DOCKER_HOST does not answer, and it is not a local unix socket this script could start an engine on (unset DOCKER_HOST to use a local one)" ;;
    esac
fi
export DOCKER_HOST="unix://$sock"

# Install the engine (and a docker CLI) if missing.  Debian's docker.io ships dockerd, the
# docker CLI, and depends on containerd, runc, tini and iptables.
if ! have dockerd || ! have docker; then
    apt_install_missing docker.io
fi
have dockerd || die "dockerd is still missing after installing docker.io"
have docker || die "the docker CLI is still missing after installing docker.io"

if pid_alive dockerd; then
    log "dockerd is already starting (pid $(cat "$(pid_file dockerd)")); waiting for it"
else
    # A previous dockerd that died leaves its pid file behind; dockerd refuses to start then.
    if [[ -s /var/run/docker.pid ]] && ! proc_alive "$(cat /var/run/docker.pid)"; then
        log "removing stale /var/run/docker.pid"
        rm -f /var/run/docker.pid
    fi
    if [[ -s /var/run/docker.pid ]]; then
        die "a dockerd (pid $(cat /var/run/docker.pid)) is running but $DOCKER_HOST does not answer; stop it or set DOCKER_HOST to its socket"
    fi
    mkdir -p "$(dirname "$sock")"
    # No systemd: dockerd starts and supervises its own containerd.
    start_detached dockerd dockerd \
        --host "unix://$sock" \
        --storage-driver "${DSTREAM_DOCKER_STORAGE_DRIVER:-overlay2}" \
        --pidfile /var/run/docker.pid
fi

if ! wait_for --pid dockerd "$START_TIMEOUT" "docker info ($DOCKER_HOST)" docker info; then
    show_log dockerd
    die "the docker engine did not come up (dockerd exited, or no answer within ${START_TIMEOUT}s; log: $(log_file dockerd))"
fi
verify_engine
