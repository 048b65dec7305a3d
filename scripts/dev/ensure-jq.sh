#!/usr/bin/env bash
# Tools for the jq benchmark (`make bench`, benchmarks/jq.py):
#   - Debian's jq CLI, the peer the jq transform is measured against;
#   - with --optimised-binding: the `jq` Python binding of the version installed in the
#     venv, rebuilt from its sdist with -O2 into build/jq-O2/site. The binding's PyPI wheels
#     build their bundled libjq without optimisation (jq.py's setup.py runs libjq's
#     configure with CFLAGS="-fPIC -pthread", which drops autoconf's default -O2), which
#     makes libjq about 2.5x slower than the jq CLI. CPPFLAGS reaches every compile line.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install_missing jq
log "jq CLI: $(jq --version)"
[[ "${1:-}" == "--optimised-binding" ]] || exit 0

python="${DSTREAM_PYTHON:-$DSTREAM_REPO_ROOT/.venv/bin/python}"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("jq"))')"
out="$DSTREAM_REPO_ROOT/build/jq-O2"
if [[ -f "$out/site/.version" && "$(cat "$out/site/.version")" == "$version" ]]; then
    log "optimised jq binding $version already built in $out/site"
    exit 0
fi
apt_install_missing gcc make
rm -rf "$out" && mkdir -p "$out"
log "building the jq binding $version from its sdist with -O2 (a few minutes)"
# --no-cache-dir: pip caches wheels built from an sdist by its hash, not by CPPFLAGS.
CPPFLAGS=-O2 "$python" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary jq "jq==$version" -w "$out/wheel" \
    >"$(log_file jq-O2)" 2>&1 || { show_log jq-O2; die "building the optimised jq binding failed"; }
"$python" -m pip install --quiet --no-deps --target "$out/site" "$out"/wheel/jq-*.whl
echo "$version" >"$out/site/.version"
log "optimised jq binding $version in $out/site"
