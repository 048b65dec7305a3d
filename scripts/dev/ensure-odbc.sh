#!/usr/bin/env bash
# The ODBC driver manager and FreeTDS, so pyodbc (the SQL Server CDC provider) loads on the
# host for its tests, with the driver registered as "FreeTDS" (what the connection strings
# name). Used by `scripts/dev/up.sh odbc` and by .github/workflows/mssql.yml (as root).
# The provider image installs its own driver.
set -euo pipefail
# shellcheck source=scripts/dev/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install_missing unixodbc tdsodbc
# Debian's and Ubuntu's tdsodbc ship the driver's odbcinst.ini template; register it if the
# package's post-install step did not (it asks debconf, whose answer may be "no").
if ! odbcinst -q -d -n FreeTDS >/dev/null 2>&1; then
    odbcinst -i -d -f /usr/share/tdsodbc/odbcinst.ini >/dev/null
fi
odbcinst -q -d -n FreeTDS >/dev/null || die "FreeTDS is installed but not registered with unixODBC"
log "unixODBC and FreeTDS are installed (driver FreeTDS registered)"
