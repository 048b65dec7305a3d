#!/usr/bin/env bash
# Make sure Azurite (the Azure Storage emulator, from the npm registry) answers:
#   blob  http://127.0.0.1:10000/devstoreaccount1
#   queue http://127.0.0.1:10001/devstoreaccount1
#   table http://127.0.0.1:10002/devstoreaccount1
# Installed with npm into $DSTREAM_DEV_HOME/azurite (pinned version), data in
# $DSTREAM_DEV_HOME/azurite-data, log in $DSTREAM_DEV_HOME/logs/azurite.log.
#
# Connection string (the emulator's well-known development account):
#   DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AZURITE_VERSION="${DSTREAM_AZURITE_VERSION:-3.35.0}"   # 3.36+ need Node >= 21; 3.35 runs on Node 18/20
AZ_HOME="$DSTREAM_DEV_HOME/azurite"
AZ_DATA="$DSTREAM_DEV_HOME/azurite-data"
AZ_MAIN="$AZ_HOME/node_modules/azurite/dist/src/azurite.js"
START_TIMEOUT="${DSTREAM_AZURITE_START_TIMEOUT:-60}"
PORTS=(10000 10001 10002)

ensure_curl

ports_ok() {
    local p
    for p in "${PORTS[@]}"; do
        http_answers "http://127.0.0.1:$p/devstoreaccount1?comp=list" || return 1
    done
}

# A real, signed request (Shared Key, the well-known devstoreaccount1 key): create a container,
# see it in the container list, delete it.  Python standard library only.
verify_blob() {
    local py
    py="$(command -v python3 || true)"
    if [[ -z "$py" ]]; then
        log "no python3; Azurite answers on its ports, skipping the signed-request check"
        return 0
    fi
    "$py" - <<'PY'
import base64, datetime, hashlib, hmac, sys, urllib.error, urllib.request
ACCOUNT = "devstoreaccount1"
KEY = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
BASE = "http://127.0.0.1:10000/" + ACCOUNT

def call(method, path, query):
    headers = {
        "x-ms-date": datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "x-ms-version": "2021-08-06",
    }
    canon_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    canon_resource = f"/{ACCOUNT}/{ACCOUNT}{path}" + "".join(
        f"\n{k}:{v}" for k, v in sorted(query.items()))
    # Signed fields: verb, Content-Encoding, -Language, -Length ("" when 0), -MD5, -Type, Date,
    # If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range.
    ctype = "application/octet-stream" if method == "PUT" else ""
    to_sign = "\n".join([method, "", "", "", "", ctype] + [""] * 6) + "\n" + canon_headers + canon_resource
    sig = base64.b64encode(hmac.new(KEY, to_sign.encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = f"SharedKey {ACCOUNT}:{sig}"
    url = BASE + path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    if ctype:
        headers["Content-Type"] = ctype  # urllib would add a form content type otherwise
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "PUT" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

status, body = call("PUT", "/dstream-setup-check", {"restype": "container"})
if status not in (201, 409):
    sys.exit(f"create container: HTTP {status}: {body[:300]}")
status, body = call("GET", "/", {"comp": "list"})
if status != 200 or "<Name>dstream-setup-check</Name>" not in body:
    sys.exit(f"list containers: HTTP {status}: {body[:300]}")
status, body = call("DELETE", "/dstream-setup-check", {"restype": "container"})
if status != 202:
    sys.exit(f"delete container: HTTP {status}: {body[:300]}")
PY
}

if ports_ok; then
    log "azurite answers on 127.0.0.1:10000-10002"
    exit 0
fi

lock_service azurite
if ports_ok; then
    log "azurite answers on 127.0.0.1:10000-10002"
    exit 0
fi

# Node.js and npm: from Debian if the machine has none.
if ! have node || ! have npm; then
    apt_install_missing nodejs npm
fi

installed=""
if [[ -r "$AZ_HOME/node_modules/azurite/package.json" ]]; then
    installed="$(node -p "require('$AZ_HOME/node_modules/azurite/package.json').version" 2>/dev/null || true)"
fi
if [[ "$installed" != "$AZURITE_VERSION" || ! -r "$AZ_MAIN" ]]; then
    log "npm install azurite@$AZURITE_VERSION into $AZ_HOME"
    mkdir -p "$AZ_HOME"
    # A package.json of our own keeps npm from walking up to some other project's.
    [[ -s "$AZ_HOME/package.json" ]] || printf '{"name":"dstream-dev-azurite","private":true}\n' >"$AZ_HOME/package.json"
    t1="$(now_ms)"
    printf '\n==== %s npm install azurite@%s\n' "$(date -Is)" "$AZURITE_VERSION" >>"$(log_file azurite-install)"
    # Run npm inside $AZ_HOME rather than with --prefix: --prefix also moves npm's *global*
    # config to $AZ_HOME/etc/npmrc, so the machine's (e.g. its `cafile` for a TLS-intercepting
    # proxy) would be ignored.  Node's extra CA file defaults to the system bundle for the same
    # reason.  Short retries: npm otherwise spends minutes per package on a TLS failure.
    if ! (cd "$AZ_HOME" &&
        NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-$(ls /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true)}" \
            npm install --no-audit --no-fund --no-update-notifier --save-exact \
            --fetch-retries=2 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 \
            "azurite@$AZURITE_VERSION") >>"$(log_file azurite-install)" 2>&1 </dev/null; then
        show_log azurite-install 30
        die "npm install azurite@$AZURITE_VERSION failed (log $(log_file azurite-install))"
    fi
    [[ -r "$AZ_MAIN" ]] || die "azurite installed but $AZ_MAIN is missing"
    log "azurite $AZURITE_VERSION installed in $(elapsed "$t1")"
fi

# A process of ours that is alive but does not answer: either still starting (then it answers
# soon) or stuck/shutting down (then it is replaced).
if pid_alive azurite && ! wait_for --pid azurite 20 "the running azurite (pid $(cat "$(pid_file azurite)")) to answer" ports_ok; then
    stop_pidfile azurite 20 azurite.js
fi
if ! pid_alive azurite; then
    for p in "${PORTS[@]}"; do
        if http_answers "http://127.0.0.1:$p/"; then
            die "something else already answers on 127.0.0.1:$p and not all Azurite ports answer; stop it first"
        fi
    done
    mkdir -p "$AZ_DATA"
    start_detached azurite node "$AZ_MAIN" \
        --blobHost 127.0.0.1 --blobPort 10000 \
        --queueHost 127.0.0.1 --queuePort 10001 \
        --tableHost 127.0.0.1 --tablePort 10002 \
        --location "$AZ_DATA" \
        --skipApiVersionCheck --loose --silent --disableTelemetry
fi

if ! wait_for --pid azurite "$START_TIMEOUT" "azurite on 127.0.0.1:10000-10002" ports_ok; then
    show_log azurite
    die "azurite did not come up (it exited, or no answer within ${START_TIMEOUT}s; log: $(log_file azurite))"
fi
if ! verify_blob; then
    show_log azurite
    die "azurite answers but a signed blob request (create/list/delete container) failed"
fi
log "azurite $AZURITE_VERSION answers on 127.0.0.1:10000-10002 (signed create/list/delete container OK)"
