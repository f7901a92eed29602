#!/usr/bin/env bash
# Installs Debian's redis-server when no redis-server is on PATH (the embedded stack runs it itself).
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found and apt-get is unavailable: install Redis 7+ and put redis-server on PATH" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing redis-server (Debian package)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system Redis on 6379; ours runs on its own port, so leave it be.
command -v redis-server >/dev/null
