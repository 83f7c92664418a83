#!/bin/sh
# Writes the reference stack's secrets as files, one value per file, for Docker secrets
# (deploy/compose.yaml) and, with --kubernetes, the env files the staging overlay's Secrets are
# generated from (deploy/kubernetes/overlays/staging/secrets/*.env). Random values, URL-safe (hex),
# so they can sit inside URLs without encoding. Existing files are kept: run it again after
# adding a secret and only the new one is written.
#
#   sh deploy/make-secrets.sh [--demo] [--kubernetes]
#
#   --demo                  give the demo simulator's meters (dc-0001, ac-0002, ...) a password,
#                           so the `demo` profile's simulator can log them in. Without it
#                           mqtt_simulator_password stays empty and the broker has no such users:
#                           whoever held that password could publish as those meters.
#
#   SECRETS_DIR             where to write (default: secrets/ next to this script)
#   MQTT_HOSTNAME           the name meters reach the broker by, in its TLS certificate
#                           (default: localhost; `mosquitto` is always in it)
#   KUBERNETES_SECRETS_DIR  where --kubernetes writes (default: the staging overlay's secrets/)
#
# Files are 0644 inside a 0700 directory: compose bind-mounts each file into containers that
# run as their own users (iotmeter 10001, postgres 999, ...), which must be able to read it,
# while no other user of the host can reach the directory. github_token is left empty: put a
# token that may create issues in the alert repository there.
#
# The broker's TLS listeners (8883, 9001) need a key pair: mqtt-certs/ gets a private CA
# (ca.crt, the file meters and mqtts:// clients trust) and a server certificate for
# MQTT_HOSTNAME signed by it, made with openssl. Replace them with your CA's to taste.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
demo=0
kubernetes=0
for arg in "$@"; do
    case $arg in
        --demo) demo=1 ;;
        --kubernetes) kubernetes=1 ;;
        *) echo "usage: $0 [--demo] [--kubernetes]" >&2; exit 2 ;;
    esac
done
dir=${SECRETS_DIR:-$here/secrets}

random() {
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

# put NAME VALUE: write unless the file exists; the value is read back either way.
put() {
    if [ ! -e "$dir/$1" ]; then
        printf '%s\n' "$2" >"$dir/$1"
        chmod 0644 "$dir/$1"
    fi
}
get() {
    head -n 1 "$dir/$1"
}

put mqtt_collector_password "$(random)"
put mqtt_dispatcher_password "$(random)"
if [ "$demo" = 1 ]; then
    # Filled when empty too: --demo on a second run turns the demo meters on.
    if [ -e "$dir/mqtt_simulator_password" ] && [ -z "$(get mqtt_simulator_password)" ]; then
        rm -f "$dir/mqtt_simulator_password" "$dir/simulator_mqtt_url"  # both made anew below
    fi
    put mqtt_simulator_password "$(random)"
else
    put mqtt_simulator_password ""
fi
put postgres_password "$(random)"
put influxdb_admin_password "$(random)"
put influxdb_token "$(random)"
put s3_access_key "$(random)"
put s3_secret_key "$(random)"
put grafana_admin_password "$(random)"
put alert_relay_token "$(random)"
put firmware_url_secret "$(random)"
put serve_token "$(random)"
if [ ! -e "$dir/github_token" ]; then
    : >"$dir/github_token"
    chmod 0644 "$dir/github_token"
fi
# The iotmeter processes take whole URLs; they are derived from the passwords above.
put collector_mqtt_url "mqtt://collector:$(get mqtt_collector_password)@mosquitto:1883"
put dispatcher_mqtt_url "mqtt://dispatcher:$(get mqtt_dispatcher_password)@mosquitto:1883"
put simulator_mqtt_url "mqtt://simulator:$(get mqtt_simulator_password)@mosquitto:1883"
put db_url "postgresql://iot:$(get postgres_password)@postgres:5432/iotmeter"

certs="$dir/mqtt-certs"
if [ ! -e "$certs/server.crt" ]; then
    if ! command -v openssl >/dev/null 2>&1; then
        echo "make-secrets: openssl is needed for the broker's TLS certificate" \
            "(or put ca.crt, server.crt and server.key in $certs)" >&2
        exit 1
    fi
    host=${MQTT_HOSTNAME:-localhost}
    mkdir -p "$certs"
    chmod 0700 "$certs"
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=iotmeter broker CA" \
        -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" \
        -keyout "$certs/server.key" -out "$certs/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:mosquitto,DNS:localhost,IP:127.0.0.1\n' "$host" \
        >"$certs/san.ext"
    openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
        -CAcreateserial -days 825 -extfile "$certs/san.ext" -out "$certs/server.crt" 2>/dev/null
    rm -f "$certs/server.csr" "$certs/san.ext" "$certs/ca.srl"
    # The broker (uid 1883) reads the key through the bind mount; the directory guards it.
    chmod 0644 "$certs/ca.crt" "$certs/server.crt" "$certs/server.key"
    chmod 0600 "$certs/ca.key"
fi

if [ "$kubernetes" = 1 ]; then
    # One env file per Secret of the staging overlay: each pod mounts only what it needs.
    kdir=${KUBERNETES_SECRETS_DIR:-$here/kubernetes/overlays/staging/secrets}
    mkdir -p "$kdir"
    chmod 0700 "$kdir"
    # envfile NAME LINE...: write unless it exists.
    envfile() {
        name=$1
        shift
        if [ ! -e "$kdir/$name" ]; then
            printf '%s\n' "$@" >"$kdir/$name"
        fi
    }
    envfile collector.env \
        "IOTMETER_MQTT_URL=mqtt://collector:$(get mqtt_collector_password)@mosquitto:1883" \
        "IOTMETER_MQTT_DISPATCH_URL=mqtt://dispatcher:$(get mqtt_dispatcher_password)@mosquitto:1883" \
        "IOTMETER_FIRMWARE_URL_SECRET=$(get firmware_url_secret)"
    envfile stores.env \
        "IOTMETER_DB_URL=postgresql://iot:$(get postgres_password)@postgres:5432/iotmeter" \
        "IOTMETER_INFLUX_TOKEN=$(get influxdb_token)" \
        "IOTMETER_S3_ACCESS_KEY=$(get s3_access_key)" \
        "IOTMETER_S3_SECRET_KEY=$(get s3_secret_key)"
    envfile alert-relay.env \
        "IOTMETER_GITHUB_TOKEN=$(cat "$dir/github_token")" \
        "IOTMETER_ALERT_RELAY_TOKEN=$(get alert_relay_token)"
    envfile staging-stores.env \
        "MQTT_COLLECTOR_PASSWORD=$(get mqtt_collector_password)" \
        "MQTT_DISPATCHER_PASSWORD=$(get mqtt_dispatcher_password)" \
        "POSTGRES_PASSWORD=$(get postgres_password)" \
        "INFLUXDB_ADMIN_PASSWORD=$(get influxdb_admin_password)" \
        "INFLUXDB_TOKEN=$(get influxdb_token)" \
        "S3_ACCESS_KEY=$(get s3_access_key)" \
        "S3_SECRET_KEY=$(get s3_secret_key)"
    echo "Kubernetes staging secrets in $kdir"
fi
echo "secrets in $dir (github_token is empty: add a token for the alert relay)"
