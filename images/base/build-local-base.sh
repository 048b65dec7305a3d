#!/usr/bin/env bash
# Build the local Python base image dstream-local/python:bookworm WITHOUT Docker Hub:
# debootstrap a minimal Debian bookworm with python3 + python3-venv from the Debian mirror the
# host's apt uses, then `docker import` it.  Provider Dockerfiles take it as a build argument
# (--build-arg BASE_IMAGE=dstream-local/python:bookworm).
#
# Idempotent: if the image exists, it only prints its Python version.  The cleaned root file
# system is cached as a tarball under $DSTREAM_DEV_HOME/cache, so a rebuild after
# `docker image rm` is a few seconds.  --rebuild drops the cache and the image first.
#
# Environment:
#   DSTREAM_BASE_IMAGE     image name (default dstream-local/python:bookworm)
#   DSTREAM_DEBIAN_MIRROR  Debian mirror (default: the host's apt sources, else deb.debian.org)
# Log: $DSTREAM_DEV_HOME/logs/base-image.log
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/dev/lib.sh"

IMAGE="${DSTREAM_BASE_IMAGE:-dstream-local/python:bookworm}"
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
CACHE_TAR="$DSTREAM_DEV_CACHE/rootfs-${SUITE}-minbase-$(printf '%s' "$INCLUDE" | tr ',' '+').tar"
LOG="$(log_file base-image)"
REBUILD=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (usage: $0 [--rebuild])" ;;
    esac
done

t0="$(now_ms)"

# The engine is needed to import and check the image.
if ! have docker || ! docker info >/dev/null 2>&1; then
    "$DSTREAM_REPO_ROOT/scripts/dev/ensure-docker.sh"
fi

# check_image [full]: print the image's Python version; with "full" also check that
# `python3 -m venv` (with pip, from the bundled wheel, offline) works in it.
check_image() {
    local ver
    ver="$(docker run --rm --network none "$IMAGE" python3 --version 2>&1)" ||
        die "python3 does not run in $IMAGE: $ver"
    if [[ "${1:-}" == full ]]; then
        docker run --rm --network none "$IMAGE" sh -c \
            'python3 -m venv /tmp/x && /tmp/x/bin/python -m pip --version' >>"$LOG" 2>&1 ||
            { show_log "$LOG" 20; die "python3 -m venv does not work in $IMAGE"; }
        log "$IMAGE: $ver; python3 -m venv (with pip) works"
    else
        log "$IMAGE: $ver"
    fi
}

if (( REBUILD == 1 )); then
    log "--rebuild: removing $IMAGE and $CACHE_TAR"
    docker image rm "$IMAGE" >/dev/null 2>&1 || true
    rm -f "$CACHE_TAR"
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists"
    check_image
    exit 0
fi

lock_service base-image
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists (built by a concurrent run)"
    check_image
    exit 0
fi

# The Debian mirror the host's apt uses (first .../debian URI that is not the security archive).
detect_mirror() {
    if [[ -n "${DSTREAM_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$DSTREAM_DEBIAN_MIRROR"
        return
    fi
    local f found=""
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r "$f" ]] && awk 'tolower($1)=="uris:" {for (i = 2; i <= NF; i++) print $i}' "$f"
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r "$f" ]] && awk '$1=="deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {print $i; break}}' "$f"
        done
    } >"$DSTREAM_DEV_RUN/mirrors.$$" 2>/dev/null || true
    found="$(grep -E '^https?://[^ ]+/debian/?$' "$DSTREAM_DEV_RUN/mirrors.$$" | head -n 1 || true)"
    rm -f "$DSTREAM_DEV_RUN/mirrors.$$"
    printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

# Remove a build directory safely: debootstrap mounts /proc and /sys inside the target while it
# runs, and may leave them mounted if it fails.
ROOTFS=""
cleanup_rootfs() {
    [[ -n "$ROOTFS" && -d "$ROOTFS" ]] || return 0
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$ROOTFS/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT

if [[ ! -s "$CACHE_TAR" ]]; then
    apt_install_missing debootstrap debian-archive-keyring
    MIRROR="$(detect_mirror)"
    ROOTFS="$(mktemp -d "$DSTREAM_DEV_CACHE/rootfs.XXXXXX")"
    chmod 755 "$ROOTFS"
    log "debootstrap --variant=minbase --include=$INCLUDE $SUITE from $MIRROR (log $LOG)"
    t1="$(now_ms)"
    printf '\n==== %s debootstrap %s from %s\n' "$(date -Is)" "$SUITE" "$MIRROR" >>"$LOG"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >>"$LOG" 2>&1 </dev/null; then
        show_log "$LOG" 30
        die "debootstrap failed (log $LOG)"
    fi
    log "debootstrap done in $(elapsed "$t1")"
    # Keep the image small: no package lists, caches, logs or documentation (copyright files stay).
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/debconf/*-old \
        "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/usr/share/locale/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
    find "$ROOTFS/usr/share/doc" -mindepth 1 -type f ! -name copyright -delete 2>/dev/null || true
    find "$ROOTFS" -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
    # Docker provides these at run time.
    rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
    # `apt-get update` inside a build should use the same (plain http) mirror.
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
    tar -C "$ROOTFS" --numeric-owner -cf "$CACHE_TAR.tmp" .
    mv -f "$CACHE_TAR.tmp" "$CACHE_TAR"
    cleanup_rootfs
    log "cached root file system: $CACHE_TAR ($(du -h "$CACHE_TAR" | cut -f1))"
else
    log "using cached root file system $CACHE_TAR"
fi

log "docker import -> $IMAGE"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "dstream local base: debootstrap $SUITE minbase + $INCLUDE" \
    - "$IMAGE" <"$CACHE_TAR" >>"$LOG" 2>&1 || { show_log "$LOG" 10; die "docker import of $CACHE_TAR failed"; }
log "$IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
check_image full
log "base image ready in $(elapsed "$t0")"
