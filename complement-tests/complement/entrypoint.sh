#!/bin/bash
# Maps Complement's homeserver contract onto Paracord's PARACORD_* configuration.
# Runs at every container start (Complement restarts committed blueprint containers), so
# everything here must be repeatable.
set -euo pipefail

: "${SERVER_NAME:?SERVER_NAME is not set (Complement sets it to the homeserver name, e.g. hs1)}"

CA_CRT=/complement/ca/ca.crt
CA_KEY=/complement/ca/ca.key
TLS_DIR=/conf/tls
mkdir -p "$TLS_DIR"

# The host part of SERVER_NAME, without any port: "hs1", "hs1:8448", "1.2.3.4", "[::1]:8448".
case "$SERVER_NAME" in
    \[*) host=${SERVER_NAME#[}; host=${host%%]*} ;;
    *:*) host=${SERVER_NAME%:*} ;;
    *)   host=$SERVER_NAME ;;
esac
if [[ $host =~ ^[0-9]+(\.[0-9]+){3}$ || $host == *:* ]]; then
    san="IP:$host"
else
    san="DNS:$host"
fi

if [[ -r $CA_CRT && -r $CA_KEY ]]; then
    # A fresh key and certificate for SERVER_NAME, signed by the Complement CA.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS_DIR/key.pem" 2>/dev/null
    openssl req -new -key "$TLS_DIR/key.pem" -subj "/CN=$host" -out "$TLS_DIR/cert.csr"
    cat > "$TLS_DIR/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
    openssl x509 -req -in "$TLS_DIR/cert.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -days 7 -sha256 \
        -extfile "$TLS_DIR/ext.cnf" -out "$TLS_DIR/cert.pem" 2>/dev/null
    chmod 0600 "$TLS_DIR/key.pem"

    # Trust the CA for outgoing federation, both through Paracord's own setting and the
    # system store (the certificates of Complement's mock servers are signed by it).
    cp "$CA_CRT" /usr/local/share/ca-certificates/complement.crt
    update-ca-certificates >/dev/null 2>&1 || true
    export PARACORD_TLS_CERT="$TLS_DIR/cert.pem"
    export PARACORD_TLS_KEY="$TLS_DIR/key.pem"
    export PARACORD_FEDERATION_CA_FILE="${PARACORD_FEDERATION_CA_FILE:-$CA_CRT}"
else
    echo "complement-entrypoint: $CA_CRT or $CA_KEY missing; Paracord generates a self-signed certificate" >&2
fi

# Values below can be overridden from the host with COMPLEMENT_SHARE_ENV_PREFIX, e.g.
# COMPLEMENT_SHARE_ENV_PREFIX=PASS_ PASS_PARACORD_LOG=debug.
export PARACORD_SERVER_NAME="$SERVER_NAME"
export PARACORD_LISTEN="${PARACORD_LISTEN:-0.0.0.0:8008}"
export PARACORD_TLS_LISTEN="${PARACORD_TLS_LISTEN:-0.0.0.0:8448}"
export PARACORD_DATA_DIR="${PARACORD_DATA_DIR:-/data}"
export PARACORD_REGISTRATION_ENABLED="${PARACORD_REGISTRATION_ENABLED:-true}"
export PARACORD_REGISTRATION_SHARED_SECRET="${PARACORD_REGISTRATION_SHARED_SECRET:-complement}"
export PARACORD_RATE_LIMITS_ENABLED="${PARACORD_RATE_LIMITS_ENABLED:-false}"
# Complement's mock servers come and go within one test: retry failed destinations quickly.
export PARACORD_FEDERATION_RETRY_BASE_MS="${PARACORD_FEDERATION_RETRY_BASE_MS:-200}"
export PARACORD_FEDERATION_RETRY_MAX_MS="${PARACORD_FEDERATION_RETRY_MAX_MS:-5000}"
# Complement's homeservers, mock servers, push gateways and URL-preview pages are on the Docker
# network or the host running Complement: private addresses the outbound guard refuses unless
# allowed.
export PARACORD_IP_RANGE_ALLOWLIST="${PARACORD_IP_RANGE_ALLOWLIST:-127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16}"
# Complement's media tests fetch other servers' media through the legacy unauthenticated
# routes, which by default serve only cached media (Synapse's enable_authenticated_media).
export PARACORD_LEGACY_MEDIA_FETCHES_REMOTE="${PARACORD_LEGACY_MEDIA_FETCHES_REMOTE:-true}"
# Complement copies the registrations of a blueprint's application services here.
export PARACORD_APPSERVICE_DIR="${PARACORD_APPSERVICE_DIR:-/complement/appservice}"
export PARACORD_LOG="${PARACORD_LOG:-info}"
# default_room_version stays Paracord's default unless PARACORD_DEFAULT_ROOM_VERSION is passed.

exec /usr/local/bin/paracord --config /data/paracord.toml
