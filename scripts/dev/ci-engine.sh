#!/usr/bin/env bash
# A Docker engine of the CI job's own, inside a GitHub Actions job container (ci.yml "full").
#
# GitHub starts a job container with the runner's engine socket bind-mounted at
# /var/run/docker.sock (actions/runner: `docker create ... -v /var/run/docker.sock:/var/run/docker.sock
# --network github_network_...`, see actions/runner#827). Left there, `docker info` in the job
# talks to the runner's engine, whose network namespace is not the job container's: a registry
# or a database the job starts on its own 127.0.0.1 is out of that engine's reach (pushes to
# 127.0.0.1:5000 fail), and paths it bind-mounts into provider containers are the runner's, not
# the job's. So the job runs an engine of its own, in its own network namespace:
#
#   1. drop the runner's socket from this container's mount table (privileged: umount), so the
#      standard path is free and nothing can reach the runner's engine by accident;
#   2. cgroup v2 (ubuntu-24.04 runners): move every process out of the container's root cgroup
#      into /init and enable all controllers for the children, as moby's hack/dind does (without
#      it the nested engine cannot create container cgroups: "subtree_control: device or resource
#      busy"); later `docker exec`s land in /init (runc joins the init process's cgroup on EBUSY);
#   3. storage: overlay2 when /var/lib/docker is not itself on overlayfs (the workflow mounts a
#      runner directory there), else vfs;
#   4. start dockerd with ensure-docker.sh, on /var/run/docker.sock (or the unix socket DOCKER_HOST
#      names), and check that it is this container's engine.
#
# Needs a privileged container. Idempotent. Log of the engine: $DSTREAM_DEV_HOME/logs/dockerd.log
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOCK=/var/run/docker.sock
case "${DOCKER_HOST:-}" in
    "") ;;
    unix://*) SOCK="${DOCKER_HOST#unix://}" ;;
    *) die "DOCKER_HOST=$DOCKER_HOST: the job's own engine listens on a unix socket (unset it, or unix:///path)" ;;
esac

# mounted_here PATH: PATH is a mount point in this mount namespace (files too, unlike mountpoint(1)).
mounted_here() {
    local target
    target="$(readlink -f "$1")"
    awk -v t="$target" '$5 == t { found = 1 } END { exit !found }' /proc/self/mountinfo
}

for path in /var/run/docker.sock "$SOCK"; do
    if [[ -e "$path" ]] && mounted_here "$path"; then
        log "unmounting $path (the runner's engine socket) from this job container"
        umount "$path" || die "cannot unmount $path: the job container must be privileged (options: --privileged)"
        rm -f "$path"
    fi
done

if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    log "cgroup v2: moving this container's processes to /init and enabling controllers for nested containers"
    mkdir -p /sys/fs/cgroup/init
    # A loop, as in hack/dind: a process started meanwhile (a `docker exec`) makes the write fail.
    tries=0
    until {
        xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
        sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    }; do
        (( ++tries < 50 )) || die "could not enable cgroup controllers in /sys/fs/cgroup (a privileged container with its own cgroup namespace is needed)"
        sleep 0.1
    done
    log "cgroup controllers for nested containers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
else
    log "cgroup v1: nothing to prepare"
fi

mkdir -p /var/lib/docker
if [[ -z "${DSTREAM_DOCKER_STORAGE_DRIVER:-}" ]]; then
    fstype="$(stat -f -c %T /var/lib/docker)"
    if [[ "$fstype" == overlayfs ]]; then
        export DSTREAM_DOCKER_STORAGE_DRIVER=vfs
        log "/var/lib/docker is on overlayfs: storage driver vfs (mount a directory there for overlay2)"
    else
        export DSTREAM_DOCKER_STORAGE_DRIVER=overlay2
        log "/var/lib/docker is on $fstype: storage driver overlay2"
    fi
fi

bash "$DSTREAM_REPO_ROOT/scripts/dev/ensure-docker.sh"

# The engine that answers must be the one started here: its data root is this container's.
root="$(docker info --format '{{.DockerRootDir}}')"
pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
proc_alive "$pid" || die "docker answers, but no dockerd of this container runs (pid file: ${pid:-none}); is it the runner's engine?"
log "the job's own engine answers (dockerd pid $pid, data root $root, storage $(docker info --format '{{.Driver}}'))"
