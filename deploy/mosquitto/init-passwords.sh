#!/bin/sh
# Writes mosquitto's password file from the stack's secrets, then exits; the broker starts
# after it (compose: depends_on ... service_completed_successfully). Runs in the
# eclipse-mosquitto image, whose mosquitto_passwd hashes the passwords (PBKDF2-SHA512).
#
#   MQTT_COLLECTOR_PASSWORD   password of the `collector` user (required)
#   MQTT_SIMULATOR_PASSWORD   password of the demo `simulator` user (optional; unset: no user)
#   /mosquitto/devices/credentials  optional, one `device_id:password` per line (# comments):
#                             per-device users for real meters (ACL: username = device_id)
#   AUTH_DIR                  where to write (default /mosquitto/auth)
#
# The `healthcheck` user gets a fresh random password on every run, kept next to the password
# file for the container's health check only.
set -eu

auth_dir=${AUTH_DIR:-/mosquitto/auth}
devices=${DEVICE_CREDENTIALS:-/mosquitto/devices/credentials}
mosquitto_uid=${MOSQUITTO_UID:-1883}

if [ -z "${MQTT_COLLECTOR_PASSWORD:-}" ]; then
    echo "init-passwords: MQTT_COLLECTOR_PASSWORD is not set" >&2
    exit 1
fi

umask 077
mkdir -p "$auth_dir"
new="$auth_dir/passwd.new"
: >"$new"

mosquitto_passwd -b "$new" collector "$MQTT_COLLECTOR_PASSWORD"
if [ -n "${MQTT_SIMULATOR_PASSWORD:-}" ]; then
    mosquitto_passwd -b "$new" simulator "$MQTT_SIMULATOR_PASSWORD"
fi

count=0
if [ -f "$devices" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            '' | '#'*) continue ;;
        esac
        user=${line%%:*}
        password=${line#*:}
        if [ "$user" = "$line" ] || [ -z "$user" ] || [ -z "$password" ]; then
            echo "init-passwords: $devices: a line is not device_id:password" >&2
            exit 1
        fi
        case "$user" in
            collector | simulator | healthcheck)
                echo "init-passwords: $devices: '$user' is reserved" >&2
                exit 1
                ;;
        esac
        mosquitto_passwd -b "$new" "$user" "$password"
        count=$((count + 1))
    done <"$devices"
fi

healthcheck=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mosquitto_passwd -b "$new" healthcheck "$healthcheck"
printf '%s\n' "$healthcheck" >"$auth_dir/healthcheck.password"

mv "$new" "$auth_dir/passwd"
# The broker drops to the mosquitto user (uid 1883 in the image) and must read both files.
if [ "$(id -u)" = 0 ]; then
    chown "$mosquitto_uid:$mosquitto_uid" "$auth_dir" "$auth_dir/passwd" "$auth_dir/healthcheck.password"
fi
echo "init-passwords: wrote $auth_dir/passwd (collector${MQTT_SIMULATOR_PASSWORD:+, simulator}, $count device users)"
