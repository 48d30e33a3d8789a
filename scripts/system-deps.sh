#!/usr/bin/env bash
# Installs the system programs Herald's tests use, where they are missing:
# PostgreSQL and Redis (the services' stores), Chromium (browser tests),
# promtool/Prometheus (alert-rule tests). Debian package names; needs root.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_ctlcluster >/dev/null || command -v pg_ctl >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "herald: missing system packages: ${need[*]}; install them (Debian: apt-get install ${need[*]})" >&2
  exit 1
fi
echo "herald: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
