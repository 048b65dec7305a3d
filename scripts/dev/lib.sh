# shellcheck shell=bash
# Shared helpers for the dev/test service scripts in scripts/dev/.
# Source it; do not execute it.  Everything prints to stderr with a "[setup]" prefix.
#
# Environment:
#   DSTREAM_DEV_HOME   machine-global state directory (default /var/lib/dstream-dev),
#                      shared by every clone: logs/, run/ (pid files), cache/, data dirs.

DSTREAM_DEV_HOME="${DSTREAM_DEV_HOME:-/var/lib/dstream-dev}"
export DSTREAM_DEV_HOME
DSTREAM_DEV_LOGS="$DSTREAM_DEV_HOME/logs"
DSTREAM_DEV_RUN="$DSTREAM_DEV_HOME/run"
DSTREAM_DEV_CACHE="$DSTREAM_DEV_HOME/cache"
if ! mkdir -p "$DSTREAM_DEV_LOGS" "$DSTREAM_DEV_RUN" "$DSTREAM_DEV_CACHE" 2>/dev/null; then
    printf '[setup] ERROR: cannot create %s (run as root, or set DSTREAM_DEV_HOME)\n' "$DSTREAM_DEV_HOME" >&2
    exit 1
fi

# Repository root, from this file's location (never from the CWD).
DSTREAM_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export DSTREAM_REPO_ROOT

export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup] %s\n' "$*" >&2; }

die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# now_ms: milliseconds since the epoch (for timings).
now_ms() { date +%s%3N; }

# elapsed START_MS -> "12.3s"
elapsed() {
    local ms=$(( $(now_ms) - $1 ))
    printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

# log_file NAME -> path of the service's log file.
log_file() { printf '%s/%s.log' "$DSTREAM_DEV_LOGS" "$1"; }

# pid_file NAME -> path of the service's pid file.
pid_file() { printf '%s/%s.pid' "$DSTREAM_DEV_RUN" "$1"; }

# show_log NAME|PATH [LINES]: print the last lines of a log to stderr.
show_log() {
    local f="$1" n="${2:-40}"
    [[ "$f" == */* ]] || f="$(log_file "$f")"
    if [[ -r "$f" ]]; then
        log "---- last $n lines of $f ----"
        tail -n "$n" "$f" | sed 's/^/[setup]   | /' >&2
        log "---- end of $f ----"
    else
        log "(no log file at $f)"
    fi
}

# wait_for [--pid NAME] TIMEOUT_SECONDS DESCRIPTION CMD [ARGS...]
# Polls CMD (output discarded) until it succeeds or the timeout passes.  Returns 1 on timeout,
# or at once, with --pid, when the process in NAME's pid file has exited.
wait_for() {
    local watch=""
    if [[ "$1" == --pid ]]; then
        watch="$2"
        shift 2
    fi
    local timeout="$1" what="$2"
    shift 2
    local deadline=$(( $(date +%s) + timeout ))
    log "waiting for $what (up to ${timeout}s)"
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [[ -n "$watch" ]] && ! pid_alive "$watch"; then
            log "$watch exited while waiting for $what"
            return 1
        fi
        if (( $(date +%s) >= deadline )); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.3
    done
}

# proc_alive PID: PID is a live process.  A zombie does not count: the daemons are orphans once
# their starter exits, and this machine's PID 1 may take a while to reap them.
proc_alive() {
    local stat
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"            # drop "pid (comm) ", comm may contain spaces
    [[ -n "$stat" && "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# pid_alive NAME: the pid in NAME's pid file is a running process.
pid_alive() {
    local pf
    pf="$(pid_file "$1")"
    [[ -s "$pf" ]] && proc_alive "$(cat "$pf")"
}

# _CLOSE_FDS: shell snippet that closes every file descriptor above 2, so a daemon holds no
# pipe or lock of its caller (make's jobserver, a CI runner's output pipe, our fd-9 lock).
# shellcheck disable=SC2016
_CLOSE_FDS='for fd in $(ls /proc/$$/fd); do if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi; done 2>/dev/null'

# detach CMD [ARGS...]: run CMD in a new session with no inherited descriptors above 2 (the
# caller sets up 0-2).  For starters that daemonize by themselves (pg_ctlcluster).
detach() {
    setsid bash -c "$_CLOSE_FDS; exec \"\$@\"" detach "$@"
}

# start_detached NAME CMD [ARGS...]
# Starts CMD in its own session (setsid + nohup, stdin from /dev/null, no inherited descriptors
# above 2), appending stdout and stderr to logs/NAME.log and writing its pid to run/NAME.pid.
# It survives the caller (make, a CI step) exiting.  The caller's environment is inherited.
start_detached() {
    local name="$1"
    shift
    local lf pf
    lf="$(log_file "$name")"
    pf="$(pid_file "$name")"
    rm -f "$pf"
    printf '\n==== %s starting %s: %s\n' "$(date -Is)" "$name" "$*" >>"$lf"
    # The inner bash records its own pid, then execs the daemon, so the pid file holds the
    # daemon's pid (no forking wrappers in between).
    nohup setsid bash -c "echo \$\$ >\"\$0\"; $_CLOSE_FDS; exec \"\$@\"" "$pf" "$@" \
        </dev/null >>"$lf" 2>&1 &
    # Wait (bounded) for the pid file so callers can rely on it.
    local tries=50
    while [[ ! -s "$pf" ]] && (( tries-- > 0 )); do
        sleep 0.1
    done
    log "started $name (pid $(cat "$pf" 2>/dev/null || echo '?'), log $lf)"
}

# stop_pidfile NAME [TIMEOUT_SECONDS] [EXPECTED_COMM_SUBSTRING]
# Sends SIGTERM to the process in run/NAME.pid (only if its command line contains the expected
# substring, to avoid killing a recycled pid), waits for it to exit, SIGKILL after the timeout.
stop_pidfile() {
    local name="$1" timeout="${2:-30}" expect="${3:-}"
    local pf pid
    pf="$(pid_file "$name")"
    if ! pid_alive "$name"; then
        rm -f "$pf"
        return 0
    fi
    pid="$(cat "$pf")"
    if [[ -n "$expect" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$expect"; then
        log "pid $pid in $pf is not $expect any more; leaving it alone"
        rm -f "$pf"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + timeout ))
    while proc_alive "$pid"; do
        if (( $(date +%s) >= deadline )); then
            log "$name did not exit within ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pf"
}

# lock_service NAME: serialize set-up of NAME across concurrent runs (several clones share the
# services).  Holds an flock on run/NAME.lock through fd 9 until the script exits.  Callers check
# "already answers" again after taking it.  Daemons must not inherit fd 9 (start_detached and
# detach close it).
lock_service() {
    local lf
    lf="$DSTREAM_DEV_RUN/$1.lock"
    exec 9>"$lf"
    if ! flock -n 9; then
        log "another set-up of $1 is running; waiting for it (up to 600s)"
        flock -w 600 9 || die "could not lock $lf within 600s"
    fi
}

# is_installed PKG: the Debian package is installed.
is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

_DSTREAM_APT_UPDATED=0
_DSTREAM_APT_STAMP="$DSTREAM_DEV_RUN/apt-update.stamp"

# apt_update_once [force]: run apt-get update at most once per script run.  Without "force",
# it is also skipped when one of these scripts ran it less than an hour ago (so `up.sh all`
# updates the package lists once, not once per service).
apt_update_once() {
    (( _DSTREAM_APT_UPDATED == 1 )) && return 0
    if [[ "${1:-}" != force && -n "$(find "$_DSTREAM_APT_STAMP" -mmin -60 2>/dev/null)" ]]; then
        _DSTREAM_APT_UPDATED=2   # skipped: lists are fresh
        return 0
    fi
    log "apt-get update"
    printf '\n==== %s apt-get update\n' "$(date -Is)" >>"$(log_file apt)"
    if ! apt-get update -q -o DPkg::Lock::Timeout=300 >>"$(log_file apt)" 2>&1 </dev/null; then
        show_log apt 30
        die "apt-get update failed"
    fi
    _DSTREAM_APT_UPDATED=1
    touch "$_DSTREAM_APT_STAMP"
}

_apt_get_install() {
    printf '\n==== %s apt-get install %s\n' "$(date -Is)" "$*" >>"$(log_file apt)"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" >>"$(log_file apt)" 2>&1 </dev/null
}

_DSTREAM_POLICY_RC_CREATED=0

_remove_policy_rc() {
    if (( _DSTREAM_POLICY_RC_CREATED == 1 )); then
        rm -f /usr/sbin/policy-rc.d
        _DSTREAM_POLICY_RC_CREATED=0
    fi
}

# apt_install_missing PKG...: install those of the packages that are not installed yet.
# Package maintainer scripts are prevented from starting services (a policy-rc.d that denies
# every start is put in place for the duration if there is none), since there is no init system
# here and these scripts start the daemons themselves with their own configuration.
apt_install_missing() {
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    (( ${#missing[@]} == 0 )) && return 0
    [[ "$(id -u)" == 0 ]] || die "need root to install ${missing[*]} (apt-get)"
    apt_update_once
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from dstream scripts/dev/lib.sh: no service starts during apt-get install\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        _DSTREAM_POLICY_RC_CREATED=1
        trap _remove_policy_rc EXIT
    fi
    log "apt-get install ${missing[*]} (output in $(log_file apt))"
    local rc=0
    _apt_get_install "${missing[@]}" || rc=$?
    if (( rc != 0 && _DSTREAM_APT_UPDATED == 2 )); then
        log "apt-get install failed with package lists from an earlier run; updating them and retrying"
        apt_update_once force
        rc=0
        _apt_get_install "${missing[@]}" || rc=$?
    fi
    _remove_policy_rc
    if (( rc != 0 )); then
        show_log apt 30
        die "apt-get install ${missing[*]} failed (exit $rc)"
    fi
}

# http_code URL: print the HTTP status code of a GET (000 when nothing answers).
http_code() {
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null || true
}

# http_answers URL: something speaks HTTP at URL (any status code).
http_answers() {
    local c
    c="$(http_code "$1")"
    [[ -n "$c" && "$c" != 000 ]]
}

# ensure_curl: curl is needed by most checks.
ensure_curl() {
    have curl || apt_install_missing curl ca-certificates
}
