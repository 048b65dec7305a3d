#!/usr/bin/env bash
# Tools for the jq benchmark (`make bench`, benchmarks/jq.py):
#   - Debian's jq CLI, the peer the jq transform is measured against;
#   - with --bindings: the venv's `jq` binding built from its sdist with -O2 (what `make venv`
#     and the provider image use: dstream/tooling/sourcebuilds.py; PyPI's wheels build libjq
#     without optimisation, about 2.5x slower than the jq CLI), and, for comparison, PyPI's
#     wheel of the same version in build/jq-pypi/site;
#   - with --compiler: only what building from source needs (gcc, make), for `make images`.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == "--compiler" ]]; then
    apt_install_missing gcc make
    exit 0
fi
apt_install_missing jq
log "jq CLI: $(jq --version)"
[[ "${1:-}" == "--bindings" ]] || exit 0

python="${DSTREAM_PYTHON:-$DSTREAM_REPO_ROOT/.venv/bin/python}"
apt_install_missing gcc make
"$python" -m dstream.tooling.sourcebuilds install
version="$("$python" -c 'import importlib.metadata as m; print(m.version("jq"))')"
out="$DSTREAM_REPO_ROOT/build/jq-pypi"
if [[ -f "$out/site/.version" && "$(cat "$out/site/.version")" == "$version" ]]; then
    exit 0
fi
rm -rf "$out"
"$python" -m pip install --quiet --no-deps --only-binary jq --target "$out/site" "jq==$version" \
    >"$(log_file jq-pypi)" 2>&1 || { show_log jq-pypi; die "installing PyPI's jq wheel $version failed"; }
echo "$version" >"$out/site/.version"
log "PyPI's jq wheel $version in $out/site (for comparison)"
