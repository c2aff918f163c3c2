#!/usr/bin/env python3
# Reference run: stands in for the `paracord` binary and starts Synapse
# configured from the same PARACORD_* environment, so the suite can be checked
# against an established homeserver (PARACORD_BIN=this file). Synapse comes
# from SYNAPSE_PYTHON (a python with matrix-synapse installed) or python3.
import os, subprocess, sys

python = os.environ.get("SYNAPSE_PYTHON", sys.executable)
env = os.environ
name = env["PARACORD_SERVER_NAME"]
host, port = env["PARACORD_LISTEN"].rsplit(":", 1)
data = env["PARACORD_DATA_DIR"]
os.makedirs(data, exist_ok=True)
reg = env.get("PARACORD_REGISTRATION_ENABLED", "true") == "true"
rl = env.get("PARACORD_RATE_LIMITS_ENABLED", "true") == "true"
big = "{per_second: 100000, burst_count: 100000}"
limits = "" if rl else f"""
rc_message: {big}
rc_registration: {big}
rc_login:
  address: {big}
  account: {big}
  failed_attempts: {big}
rc_joins:
  local: {big}
  remote: {big}
rc_joins_per_room: {big}
rc_invites:
  per_room: {big}
  per_user: {big}
  per_issuer: {big}
rc_admin_redaction: {big}
rc_presence:
  per_user: {big}
rc_room_creation: {big}
"""
cfg = f"""
server_name: "{name}"
pid_file: {data}/homeserver.pid
public_baseurl: http://{host}:{port}/
listeners:
  - port: {port}
    bind_addresses: ['{host}']
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {data}/homeserver.db
media_store_path: {data}/media
signing_key_path: {data}/signing.key
report_stats: false
enable_registration: {str(reg).lower()}
enable_registration_without_verification: true
registration_shared_secret: "{env['PARACORD_REGISTRATION_SHARED_SECRET']}"
default_room_version: "12"
suppress_key_server_warning: true
trusted_key_servers: []
room_list_publication_rules:
  - action: allow
refresh_token_lifetime: 24h
presence:
  enabled: true
{limits}
"""
path = os.path.join(data, "homeserver.yaml")
with open(path, "w") as f:
    f.write(cfg)
if not os.path.exists(os.path.join(data, "signing.key")):
    subprocess.run([python, "-m", "synapse.app.homeserver", "-c", path, "--generate-keys"], check=True)
os.execv(python, [python, "-m", "synapse.app.homeserver", "-c", path])
