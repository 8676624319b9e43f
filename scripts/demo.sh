#!/usr/bin/env bash
# `make demo`: the appliance on loopback, a few machines registered with cosmctl, shown.
#
# Honest label: the virtual rack (QEMU machines PXE-booting through COSM's DHCP/TFTP) does
# not exist yet. This demo shows the inventory, roles, role rules, lifecycle and timeline
# through the real appliance and the real cosmctl. DEMO_KEEP=1 leaves the appliance running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
DEMO_DIR=$(mktemp -d /tmp/cosm-demo.XXXXXX)
PORT=${DEMO_PORT:-18080}
APP_PID=""

cleanup() {
  if [ -n "$APP_PID" ] && [ "${DEMO_KEEP:-0}" != 1 ]; then
    kill -TERM "$APP_PID" 2>/dev/null || true
    wait "$APP_PID" 2>/dev/null || true
    rm -rf "$DEMO_DIR"
  fi
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cat > "$DEMO_DIR/appliance.toml" <<TOML
data_dir = "data"
[api]
listen = "127.0.0.1:$PORT"
TOML

step "Starting cosm-appliance on 127.0.0.1:$PORT (data in $DEMO_DIR/data)"
echo "   (This demo shows the inventory API. The virtual rack of PXE-booting QEMU machines is not built yet.)"
$BIN/cosm-appliance serve --config "$DEMO_DIR/appliance.toml" >"$DEMO_DIR/appliance.log" 2>&1 &
APP_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$APP_PID" 2>/dev/null || { echo "the appliance exited:"; cat "$DEMO_DIR/appliance.log"; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "the appliance did not come up:"; cat "$DEMO_DIR/appliance.log"; exit 1; }
export COSM_URL="http://127.0.0.1:$PORT"
export COSM_TOKEN
COSM_TOKEN=$(cat "$DEMO_DIR/data/admin.token")
echo "   admin token written to $DEMO_DIR/data/admin.token (0600)"

step "Roles (seeded) and a rule: QEMU NICs with >= 4 CPUs become hypervisors"
$BIN/cosmctl roles list
$BIN/cosmctl rules add --role host --priority 10 --mac-prefix 52:54:00 --min-cpus 4 --description "big QEMU machines are hypervisors"
$BIN/cosmctl rules list

step "Registering machines"
$BIN/cosmctl machines add 52:54:00:aa:bb:01 --role center --hostname center1 --ip 192.0.2.10
$BIN/cosmctl machines add 52:54:00:aa:bb:02 --role web --hostname web1
$BIN/cosmctl machines add 52:54:00:aa:bb:03 --hostname unknown1
echo "   a machine that reports 8 CPUs is given its role by the rule:"
curl -sf -X POST "$COSM_URL/api/v1/machines" -H "Authorization: Bearer $COSM_TOKEN" -H 'Content-Type: application/json' \
  -d '{"mac":"52:54:00:aa:bb:04","inventory":{"cpu":{"model":"QEMU Virtual CPU","sockets":1,"cores":8,"threads":8},"memory_bytes":17179869184,"disks":[{"name":"vda","size_bytes":107374182400}]}}' >/dev/null

step "Walking one machine through its lifecycle"
$BIN/cosmctl machines set-state 52:54:00:aa:bb:01 deploying --reason "installer started"
$BIN/cosmctl machines set-state 52:54:00:aa:bb:01 deployed --reason "kickstart finished"
echo "   an illegal move is refused with the allowed states:"
$BIN/cosmctl machines set-state 52:54:00:aa:bb:03 active || true

step "The rack"
$BIN/cosmctl machines list

step "Timeline of 52:54:00:aa:bb:01"
$BIN/cosmctl events 52:54:00:aa:bb:01

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  step "DEMO_KEEP=1: the appliance keeps running (PID $APP_PID)"
  echo "   export COSM_URL=$COSM_URL COSM_TOKEN=\$(cat $DEMO_DIR/data/admin.token)"
  echo "   $BIN/cosmctl machines list"
  echo "   stop it with: kill $APP_PID"
else
  step "Done; stopping the appliance (DEMO_KEEP=1 keeps it running)"
fi
