#!/usr/bin/env bash
# Make sure the local OCI registry (Debian's docker-registry = CNCF distribution 2.8) answers on
# http://127.0.0.1:5000 (no auth, config scripts/dev/registry/config.yml).
# With --auth, also the htpasswd-protected one on http://127.0.0.1:5001
# (config scripts/dev/registry/config-htpasswd.yml, user dstream / password dstream-test).
#
# We run our own processes with the project's configs; the Debian service (its packaged config
# turns on htpasswd auth and listens on every interface) is never started, and stopped if found
# running.  Storage: $DSTREAM_DEV_HOME/registry and $DSTREAM_DEV_HOME/registry-auth.
# Logs: $DSTREAM_DEV_HOME/logs/registry.log and registry-auth.log.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WANT_AUTH=0
for arg in "$@"; do
    case "$arg" in
        --auth) WANT_AUTH=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (usage: $0 [--auth])" ;;
    esac
done

START_TIMEOUT="${DSTREAM_REGISTRY_START_TIMEOUT:-30}"
AUTH_USER=dstream
AUTH_PASSWORD=dstream-test
HTPASSWD_FILE="$DSTREAM_DEV_HOME/registry-auth.htpasswd"
REGISTRY_BIN=""

ensure_curl

# registry_ok PORT AUTH(0|1): our registry answers on PORT.
registry_ok() {
    local port="$1" auth="$2"
    if [[ "$auth" == 1 ]]; then
        # Unauthenticated requests must be refused, authenticated ones accepted.
        [[ "$(http_code "http://127.0.0.1:$port/v2/")" == 401 ]] &&
            curl -fsS -m 5 -o /dev/null -u "$AUTH_USER:$AUTH_PASSWORD" "http://127.0.0.1:$port/v2/" 2>/dev/null
    else
        curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null
    fi
}

find_registry_bin() {
    local c
    for c in docker-registry /usr/bin/docker-registry registry; do
        if have "$c"; then
            REGISTRY_BIN="$(command -v "$c")"
            return 0
        fi
    done
    return 1
}

# Stop a Debian docker-registry service running with its packaged config, if any (it would hold
# :5000 with auth on every interface).  Only those exact processes are signalled, by pid.
stop_debian_service() {
    local d pid cmd
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        cmd="$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null || true)"
        if [[ "$cmd" == *docker-registry* && "$cmd" == */etc/docker/registry/config.yml* ]]; then
            log "stopping Debian's docker-registry service (pid $pid, packaged config)"
            kill -TERM "$pid" 2>/dev/null || true
            local tries=50
            while proc_alive "$pid" && (( tries-- > 0 )); do sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

ensure_htpasswd() {
    if [[ -s "$HTPASSWD_FILE" ]] && have htpasswd &&
        htpasswd -vb "$HTPASSWD_FILE" "$AUTH_USER" "$AUTH_PASSWORD" >/dev/null 2>&1; then
        return 0
    fi
    have htpasswd || apt_install_missing apache2-utils
    log "writing $HTPASSWD_FILE (bcrypt; user $AUTH_USER)"
    local tmp="$HTPASSWD_FILE.tmp.$$"
    htpasswd -Bbn "$AUTH_USER" "$AUTH_PASSWORD" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$HTPASSWD_FILE"
}

# verify_push NAME PORT AUTH: push a tiny image with the Docker engine, read its manifest back
# over the API and delete it (checks plain-http push from the engine and that deletes work).
verify_push() {
    local name="$1" port="$2" auth="$3"
    if ! have docker || ! docker info >/dev/null 2>&1; then
        log "no docker engine answers; skipping the push check for $name (run ensure-docker.sh first)"
        return 0
    fi
    local repo=dstream-setup-check ref tmp curl_auth=()
    ref="127.0.0.1:$port/$repo:latest"
    tmp="$(mktemp -d)"
    # A throw-away client config, so `docker login` does not touch the user's ~/.docker.
    export DOCKER_CONFIG="$tmp/docker-config"
    mkdir -p "$DOCKER_CONFIG" "$tmp/rootfs"
    echo "dstream setup check" >"$tmp/rootfs/setup-check.txt"
    if [[ "$auth" == 1 ]]; then
        curl_auth=(-u "$AUTH_USER:$AUTH_PASSWORD")
        printf '%s' "$AUTH_PASSWORD" | docker login -u "$AUTH_USER" --password-stdin "127.0.0.1:$port" >/dev/null 2>&1 ||
            { rm -rf "$tmp"; die "docker login 127.0.0.1:$port as $AUTH_USER failed"; }
    fi
    if ! tar -C "$tmp/rootfs" -c . | docker import - "$ref" >/dev/null; then
        rm -rf "$tmp"
        die "docker import of a tiny test image as $ref failed"
    fi
    if ! docker push -q "$ref" >"$tmp/push.out" 2>&1; then
        cat "$tmp/push.out" >&2
        docker image rm -f "$ref" >/dev/null 2>&1 || true
        rm -rf "$tmp"
        die "docker push $ref failed"
    fi
    docker image rm -f "$ref" >/dev/null 2>&1 || true
    local digest
    digest="$(curl -fsS -m 10 "${curl_auth[@]}" -o /dev/null -D - \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://127.0.0.1:$port/v2/$repo/manifests/latest" |
        tr -d '\r' | awk 'tolower($1)=="docker-content-digest:" {print $2}')"
    [[ "$digest" == sha256:* ]] || { rm -rf "$tmp"; die "pushed manifest not found on 127.0.0.1:$port"; }
    local code
    code="$(curl -s -m 10 "${curl_auth[@]}" -o /dev/null -w '%{http_code}' -X DELETE \
        "http://127.0.0.1:$port/v2/$repo/manifests/$digest")"
    [[ "$code" == 202 ]] || { rm -rf "$tmp"; die "DELETE manifest on 127.0.0.1:$port answered $code, expected 202 (delete enabled?)"; }
    rm -rf "$tmp"
    unset DOCKER_CONFIG
    # Leave no trace in /v2/_catalog (no cache is configured, so removing the empty repository's
    # directory under a running registry is safe; the few unreferenced bytes of blobs stay).
    rm -rf "$DSTREAM_DEV_HOME/$name/docker/registry/v2/repositories/$repo"
    log "$name: docker push over plain http, manifest read and delete OK"
}

# ensure_registry NAME PORT CONFIG AUTH
ensure_registry() {
    local name="$1" port="$2" config="$3" auth="$4"
    local url="http://127.0.0.1:$port/v2/"
    if registry_ok "$port" "$auth"; then
        log "$name answers at $url"
        return 0
    fi
    # One lock per registry (taking the second one releases the first).
    lock_service "$name"
    if registry_ok "$port" "$auth"; then
        log "$name answers at $url"
        return 0
    fi
    [[ -r "$config" ]] || die "missing registry config $config"
    if ! find_registry_bin; then
        apt_install_missing docker-registry
        find_registry_bin || die "docker-registry is still missing after installing it"
    fi
    stop_debian_service
    [[ "$auth" == 1 ]] && ensure_htpasswd

    # A process of ours that is alive but does not answer: either still starting (then it
    # answers soon) or stuck (then it is replaced).
    if pid_alive "$name" &&
        ! wait_for --pid "$name" 10 "the running $name (pid $(cat "$(pid_file "$name")")) to answer" registry_ok "$port" "$auth"; then
        stop_pidfile "$name" 10 docker-registry
    fi
    if ! pid_alive "$name"; then
        if http_answers "$url"; then
            die "something else answers on 127.0.0.1:$port (HTTP $(http_code "$url")) and it is not the dstream $name; stop it first"
        fi
        local storage="$DSTREAM_DEV_HOME/$name"
        mkdir -p "$storage"
        if [[ "$auth" == 1 ]]; then
            REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$storage" \
                REGISTRY_AUTH_HTPASSWD_PATH="$HTPASSWD_FILE" \
                start_detached "$name" "$REGISTRY_BIN" serve "$config"
        else
            REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$storage" \
                start_detached "$name" "$REGISTRY_BIN" serve "$config"
        fi
    fi
    if ! wait_for --pid "$name" "$START_TIMEOUT" "$name at $url" registry_ok "$port" "$auth"; then
        show_log "$name"
        die "$name did not come up at $url (it exited, or no answer within ${START_TIMEOUT}s; log: $(log_file "$name"))"
    fi
    log "$name answers at $url (binary $REGISTRY_BIN, storage $DSTREAM_DEV_HOME/$name)"
    verify_push "$name" "$port" "$auth"
}

ensure_registry registry 5000 "$DSTREAM_REPO_ROOT/scripts/dev/registry/config.yml" 0
if [[ "$WANT_AUTH" == 1 ]]; then
    ensure_registry registry-auth 5001 "$DSTREAM_REPO_ROOT/scripts/dev/registry/config-htpasswd.yml" 1
fi
