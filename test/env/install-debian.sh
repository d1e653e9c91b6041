#!/usr/bin/env bash
# Installs the Debian packages in test/env/debian-packages.txt non-interactively, then makes sure no
# daemon they ship is running or enabled: tests start their own Postfix, dnsmasq and Prometheus
# instances, and a system one would hold ports (25, 53, 9090) or answer in their place.
# Idempotent; run as root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
list="$here/debian-packages.txt"
export DEBIAN_FRONTEND=noninteractive

mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]\+$//' -e '/^[[:space:]]*$/d' "$list" | awk '{print $1}')

# Postfix asks what kind of mail server it is; "No configuration" leaves /etc/postfix/main.cf
# absent (we write our own below) and starts nothing.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string mailfleet.test" | debconf-set-selections

# Keep maintainer scripts from starting services while installing (containers usually ship a
# policy-rc.d that does this already; add a temporary one only if there is none).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added_policy=1
fi
trap '[ "$added_policy" = 1 ] && rm -f "$policy"' EXIT

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-debian: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
else
  echo "install-debian: all ${#pkgs[@]} packages present"
fi

# Test instances run as `postfix -c DIR` with their own main.cf (test/env/peers/postfix.ts); as
# root that needs no alternate_config_directories entry (only set-gid commands run by other users
# check it). The default instance gets a main.cf that keeps it off the network should anything
# ever start it.
mkdir -p /etc/postfix
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
postconf -e 'inet_interfaces = loopback-only' 'master_service_disable = inet'
postconf -X maillog_file 2>/dev/null || true

# Stop and disable whatever the packages may have started (the system Postfix, a Prometheus,
# a node exporter). On a machine without a running systemd, systemctl disable still removes the
# enablement links; stop via the init scripts.
for svc in postfix dnsmasq prometheus prometheus-node-exporter; do
  if [ -e "/lib/systemd/system/$svc.service" ] || [ -e "/etc/init.d/$svc" ]; then
    systemctl disable "$svc" >/dev/null 2>&1 || true
    systemctl stop "$svc" >/dev/null 2>&1 || true
    [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
done
# The default Postfix instance, if something started it anyway.
postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true

echo "install-debian: done"
