#!/usr/bin/env bash
# Install the system packages lockscope's tests need, on Debian 12 (bookworm).
#
# The tests start their own servers (lockscope.testing), so the services these packages
# would start are not needed: they are kept from starting during installation.
# Idempotent: when every package is installed already, apt is not touched at all.
set -euo pipefail

packages=(
  redis-server
  zookeeper default-jre-headless
  postgresql
  mariadb-server mariadb-client
  prometheus prometheus-alertmanager
  chromium
  faketime
  tmux
  procps
  ca-certificates
  git
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup-system: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi

# invoke-rc.d and deb-systemd-invoke consult policy-rc.d: exit code 101 means "do not
# start services". Only add (and later remove) it when the machine has none of its own.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "setup-system: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
