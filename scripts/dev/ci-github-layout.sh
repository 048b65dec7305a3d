#!/usr/bin/env bash
# Run ci.yml's "full" job on this machine in the layout GitHub gives a job container, to see it
# pass (or fail) before GitHub does.
#
#   scripts/dev/ci-github-layout.sh [REF]      (default: HEAD of this checkout)
#
# What GitHub's runner does for `container:` (actions/runner, the `docker create` it logs; see
# actions/runner#827): a user-defined bridge network of its own (--network github_network_...),
# the runner's engine socket bind-mounted at /var/run/docker.sock, the work directory mounted at
# /__w, the job's steps run inside with `docker exec`. Here: the same network kind, this
# machine's engine socket at /var/run/docker.sock, a fresh clone of REF under /__w/dstream/dstream
# (what actions/checkout leaves), a volume at /var/lib/docker (ci.yml mounts a runner directory
# there), --privileged as ci.yml asks, and the steps of ci.yml's job in order.
#
# Differences from GitHub, and why:
#   - the image is DSTREAM_CI_IMAGE (default dstream-local/python:bookworm, Debian 12 built by
#     debootstrap): GitHub pulls debian:12.12 from Docker Hub, which this machine cannot reach;
#   - this machine's HTTPS goes through a TLS-intercepting proxy whose CA only the host trusts, so
#     the host's CA bundle is mounted read-only at /host-ca and named in PIP_CERT,
#     NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, SSL_CERT_FILE and CURL_CA_BUNDLE (at run time only,
#     nothing is baked into an image); on GitHub HTTPS just works;
#   - this machine is cgroup v1, GitHub's ubuntu-24.04 runners cgroup v2: ci-engine.sh's cgroup v2
#     step runs there only;
#   - where this machine's own capability bounding set lacks a capability (these development
#     machines lack CAP_SYS_RESOURCE), `docker run --privileged` cannot start at all ("unable to
#     apply caps"). The container then gets what --privileged would give, less that capability:
#     every other capability, no seccomp or AppArmor profile, every device, and, as a first step,
#     /sys and the cgroup v1 hierarchies mounted read-write (the mounts --privileged makes, done
#     the way the original hack/dind did: a tmpfs on /sys/fs/cgroup, each hierarchy mounted on it).
# Everything the job starts (its engine, registry, Azurite, PostgreSQL, provider containers) lives
# in the job container's own namespaces, so it never touches this machine's shared services.
# The container, network, volume and clone are removed at the end.
# Output: the job's log on stdout; exit status: the job's.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ref="${1:-HEAD}"
image="${DSTREAM_CI_IMAGE:-dstream-local/python:bookworm}"
commit="$(git -C "$DSTREAM_REPO_ROOT" rev-parse --verify "$ref^{commit}")" || die "no commit $ref"
id="dstream-ci-layout-$(date +%s)-$$"
work="$DSTREAM_DEV_HOME/ci-layout/$id"
ca=/etc/ssl/certs/ca-certificates.crt

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    docker rm -f "$id" >/dev/null 2>&1 || true
    docker network rm "$id" >/dev/null 2>&1 || true
    docker volume rm "$id-docker" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

docker image inspect "$image" >/dev/null 2>&1 || die "no image $image here (scripts/dev/up.sh base builds it)"
log "cloning $commit into $work/dstream/dstream (what actions/checkout leaves in /__w)"
mkdir -p "$work/dstream"
git clone --quiet --no-checkout "$DSTREAM_REPO_ROOT" "$work/dstream/dstream"
git -C "$work/dstream/dstream" checkout --quiet "$commit"
docker network create "$id" >/dev/null
docker volume create "$id-docker" >/dev/null

# --privileged, or its closest equivalent where this machine cannot grant every capability.
bounding="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
prep=""
if (( (16#$bounding >> 24) & 1 )); then
    privilege=(--privileged)
else
    log "this machine's capability bounding set ($bounding) lacks CAP_SYS_RESOURCE: --privileged cannot start; granting the rest"
    privilege=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
        --security-opt apparmor=unconfined --device-cgroup-rule "a *:* rwm")
    # shellcheck disable=SC2016
    prep='
echo "::step:: (here only) the read-write /sys and cgroup mounts --privileged would have made"
mount -o remount,rw /sys
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    for d in /sys/fs/cgroup/*; do umount "$d"; done
    umount /sys/fs/cgroup
    mount -t tmpfs -o uid=0,gid=0,mode=0755 cgroup /sys/fs/cgroup
    for h in $(cut -d: -f2 /proc/1/cgroup); do
        d="${h#name=}"; mkdir -p "/sys/fs/cgroup/$d"; mount -n -t cgroup -o "$h" cgroup "/sys/fs/cgroup/$d"
    done
fi
'
fi

# ci.yml "full", step by step (the checkout step is the clone above); expanded in the container.
# shellcheck disable=SC2016
steps='
set -euo pipefail
mkdir -p "$HOME"
'"$prep"'
echo "::step:: tools the checkout and set-up need"
apt-get update -q && apt-get install -y -q --no-install-recommends git make python3 python3-venv python3-dev gcc ca-certificates curl
echo "::step:: the job'"'"'s own Docker engine"
bash scripts/dev/ci-engine.sh
echo "::step:: .ci/run (make test)"
bash .ci/run
'
log "running ci.yml's full job in $image (network $id, this machine's socket at /var/run/docker.sock)"
started="$(now_ms)"
rc=0
docker run --name "$id" "${privilege[@]}" --network "$id" \
    -v /var/run/docker.sock:/var/run/docker.sock \
    -v "$work:/__w" -v "$id-docker:/var/lib/docker" \
    -v "$ca:/host-ca/ca-certificates.crt:ro" \
    -e CI=true -e HOME=/github/home -e DEBIAN_FRONTEND=noninteractive \
    -e PIP_CERT=/host-ca/ca-certificates.crt -e NODE_EXTRA_CA_CERTS=/host-ca/ca-certificates.crt \
    -e REQUESTS_CA_BUNDLE=/host-ca/ca-certificates.crt -e SSL_CERT_FILE=/host-ca/ca-certificates.crt \
    -e CURL_CA_BUNDLE=/host-ca/ca-certificates.crt \
    -w /__w/dstream/dstream "$image" bash -c "$steps" || rc=$?
log "the full job exited $rc after $(elapsed "$started")"
exit "$rc"
