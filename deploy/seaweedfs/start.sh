#!/bin/sh
# SeaweedFS for the iotmeter reference stack: one `weed server` process (master, volume server,
# filer and S3 gateway on :8333) keeping everything under /data. The S3 identity is written
# from the stack's secrets at every start, so no key is ever stored in the repository. The
# collector creates its bucket (iot-data) itself on first use, which the Admin action allows.
#
#   S3_ACCESS_KEY, S3_SECRET_KEY   the iotmeter identity (required), or
#   S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE   files holding them (Docker secrets)
#   S3_CONFIG                      where to write the identity file (default /tmp/s3.json)
set -eu

# A *_FILE variable wins: its file's first line is the value.
if [ -n "${S3_ACCESS_KEY_FILE:-}" ]; then S3_ACCESS_KEY=$(head -n 1 "$S3_ACCESS_KEY_FILE"); fi
if [ -n "${S3_SECRET_KEY_FILE:-}" ]; then S3_SECRET_KEY=$(head -n 1 "$S3_SECRET_KEY_FILE"); fi

if [ -z "${S3_ACCESS_KEY:-}" ] || [ -z "${S3_SECRET_KEY:-}" ]; then
    echo "seaweedfs: S3_ACCESS_KEY and S3_SECRET_KEY must be set" >&2
    exit 1
fi
# The keys go into JSON verbatim: refuse the characters that would need escaping there.
case "$S3_ACCESS_KEY$S3_SECRET_KEY" in
    *\"* | *\\*)
        printf '%s\n' 'seaweedfs: S3 keys must not contain a double quote or a backslash' >&2
        exit 1
        ;;
esac

config=${S3_CONFIG:-/tmp/s3.json}
umask 077
cat >"$config" <<EOF
{
  "identities": [
    {
      "name": "iotmeter",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF

# -volume.max=0: as many volumes as the disk holds. 1 GiB volumes suit a single node.
exec weed server -dir=/data -ip.bind=0.0.0.0 \
    -master.volumeSizeLimitMB=1024 -volume.max=0 \
    -s3 -s3.port=8333 -s3.config="$config"
