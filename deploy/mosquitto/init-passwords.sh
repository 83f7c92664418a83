#!/bin/sh
# Writes mosquitto's password file from the stack's secrets, then exits; the broker starts
# after it (compose: depends_on ... service_completed_successfully). Runs in the
# eclipse-mosquitto image, whose mosquitto_passwd hashes the passwords (PBKDF2-SHA512).
#
#   MQTT_COLLECTOR_PASSWORD   password of the `collector` user: the collector's intake (required)
#   MQTT_DISPATCHER_PASSWORD  password of the `dispatcher` user: the collector's commands and
#                             firmware offers (required; IOTMETER_MQTT_DISPATCH_URL)
#   MQTT_SIMULATOR_PASSWORD   demo only (optional; unset or empty: no simulated meters): one
#                             device user per simulated meter, all with this password, for
#                             `iotmeter simulate --devices N --kind mixed --device-users`
#   MQTT_SIMULATOR_DEVICES    N above (default 50): users dc-0001, ac-0002, dc-0003, ...
#   /mosquitto/devices/credentials  optional, one `device_id:password` per line (# comments):
#                             per-device users for real meters (ACL: username = device_id)
#   AUTH_DIR                  where to write (default /mosquitto/auth)
#
# The broker makes the username the client id (use_username_as_clientid), so every user here
# is one connection. The `healthcheck` user gets a fresh random password on every run, kept
# next to the password file for the container's health check only.
set -eu

auth_dir=${AUTH_DIR:-/mosquitto/auth}
devices=${DEVICE_CREDENTIALS:-/mosquitto/devices/credentials}
mosquitto_uid=${MOSQUITTO_UID:-1883}

for variable in MQTT_COLLECTOR_PASSWORD MQTT_DISPATCHER_PASSWORD; do
    eval "value=\${$variable:-}"
    if [ -z "$value" ]; then
        echo "init-passwords: $variable is not set" >&2
        exit 1
    fi
done

umask 077
mkdir -p "$auth_dir"
new="$auth_dir/passwd.new"
: >"$new"

mosquitto_passwd -b "$new" collector "$MQTT_COLLECTOR_PASSWORD"
mosquitto_passwd -b "$new" dispatcher "$MQTT_DISPATCHER_PASSWORD"

# A username is a device id (docs/protocol.md) and lands in the ACL's topic patterns.
check_device_id() {
    case "$1" in
        '' | [!A-Za-z0-9]* | *[!A-Za-z0-9_-]*)
            echo "init-passwords: $2: '$1' is not a device id ([A-Za-z0-9][A-Za-z0-9_-]*)" >&2
            exit 1
            ;;
        collector | dispatcher | healthcheck)
            echo "init-passwords: $2: '$1' is reserved" >&2
            exit 1
            ;;
    esac
    if [ "${#1}" -gt 64 ]; then
        echo "init-passwords: $2: '$1' is longer than 64 characters" >&2
        exit 1
    fi
}

simulated=0
if [ -n "${MQTT_SIMULATOR_PASSWORD:-}" ]; then
    count=${MQTT_SIMULATOR_DEVICES:-50}
    case "$count" in
        '' | *[!0-9]*)
            echo "init-passwords: MQTT_SIMULATOR_DEVICES '$count' is not a count" >&2
            exit 1
            ;;
    esac
    # The simulator's ids for --kind mixed: odd indexes DC, even AC, from 1.
    while [ "$simulated" -lt "$count" ]; do
        simulated=$((simulated + 1))
        if [ $((simulated % 2)) = 1 ]; then kind=dc; else kind=ac; fi
        mosquitto_passwd -b "$new" "$(printf '%s-%04d' "$kind" "$simulated")" \
            "$MQTT_SIMULATOR_PASSWORD"
    done
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
        check_device_id "$user" "$devices"
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
echo "init-passwords: wrote $auth_dir/passwd (collector, dispatcher, $simulated simulated meters, $count device users)"
