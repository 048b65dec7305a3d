#!/usr/bin/env bash
# The ODBC driver manager and FreeTDS, so pyodbc (the SQL Server CDC provider) loads on the
# host for its unit tests. The provider image installs its own driver.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install_missing unixodbc tdsodbc
log "unixODBC and FreeTDS are installed"
