#!/usr/bin/env bash
# Installs the Debian packages a target needs when they are missing (as root, with apt-get),
# and makes sure the shared PostgreSQL the tests use is running. Otherwise: one line saying
# what to install. Usage: scripts/system-deps.sh run|test
set -euo pipefail

need_run=(mosquitto:mosquitto)
need_test=(mosquitto:mosquitto mosquitto_pub:mosquitto-clients influxd:influxdb
           pg_ctlcluster:postgresql-common initdb:postgresql promtool:prometheus
           amtool:prometheus-alertmanager
           mosquitto_ctrl:mosquitto-clients mosquitto_passwd:mosquitto psql:postgresql-client
           systemd-analyze:systemd openssl:openssl
           chromium:chromium chromedriver:chromium-driver)

case "${1:-}" in
  run) wanted=("${need_run[@]}") ;;
  test) wanted=("${need_test[@]}") ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] \
    || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

missing=()
for pair in "${wanted[@]}"; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# Debian's mosquitto and influxdb packages may start system services of their own; the tests
# start private instances on free ports and never use those.
if [ "$1" = test ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then
      version=$(ls /etc/postgresql | sort -n | tail -n 1)
      [ -n "$version" ] || { echo "no PostgreSQL cluster in /etc/postgresql" >&2; exit 1; }
      pg_ctlcluster --skip-systemctl-redirect "$version" main start
    else
      echo "PostgreSQL is not running on 127.0.0.1:5432; start it (tests need it)" >&2
      exit 1
    fi
  fi
fi
