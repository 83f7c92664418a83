#!/bin/sh
# Creates the dynamic security plugin's configuration with its admin user, once, before the
# broker first starts (mosquitto-dynsec.conf); later runs leave it alone, since the plugin
# itself keeps it (clients and roles added at run time). Runs in the eclipse-mosquitto image.
#
#   MQTT_ADMIN_PASSWORD  password of the plugin's `admin` user (required): it can create and
#                        delete every broker client, so it stays with the operators and the
#                        device API (IOTMETER_MQTT_ADMIN_URL), never on a device.
#   DYNSEC_FILE          default /mosquitto/data/dynamic-security.json
set -eu

file=${DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}
mosquitto_uid=${MOSQUITTO_UID:-1883}

if [ -z "${MQTT_ADMIN_PASSWORD:-}" ]; then
    echo "init-dynsec: MQTT_ADMIN_PASSWORD is not set" >&2
    exit 1
fi
if [ -f "$file" ]; then
    echo "init-dynsec: $file exists, left as it is"
    exit 0
fi
umask 077
mosquitto_ctrl dynsec init "$file" admin "$MQTT_ADMIN_PASSWORD" >/dev/null
if [ "$(id -u)" = 0 ]; then
    chown "$mosquitto_uid:$mosquitto_uid" "$file"
fi
echo "init-dynsec: wrote $file (admin user only: run 'iotmeter broker setup' next)"
