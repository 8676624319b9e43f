#!/usr/bin/env bash
# `make demo`: the appliance on a private provisioning network (a network namespace with a
# bridge), a few machines registered with cosmctl, and one virtual machine (QEMU) that
# boots COSM's agent ramdisk, takes a DHCP lease from the appliance and enrols itself with
# its hardware inventory — then is switched off and goes `lost`.
#
# Honest label: the VM is started with the ramdisk's kernel and initramfs directly
# (-kernel/-initrd). PXE/iPXE network boot through TFTP and the HTTP boot endpoints is not
# built yet. DEMO_KEEP=1 leaves the appliance (and the VM) running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/debug
NS=cosmdemo$$
DEMO_DIR=$(mktemp -d /tmp/cosm-demo.XXXXXX)
PORT=${DEMO_PORT:-8080}
URL="http://192.0.2.1:$PORT"
APP_PID=""
VM_PID=""
VM_MAC=52:54:00:de:00:01

cleanup() {
  if [ "${DEMO_KEEP:-0}" = 1 ]; then return; fi
  [ -n "$VM_PID" ] && kill "$VM_PID" 2>/dev/null || true
  [ -n "$APP_PID" ] && kill -TERM "$APP_PID" 2>/dev/null || true
  [ -n "$APP_PID" ] && wait "$APP_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$DEMO_DIR"
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
inns() { ip netns exec "$NS" "$@"; }
ctl() { inns "$BIN/cosmctl" "$@"; }

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, a bridge and a tap for the VM)"; exit 1; }
[ -f images/out/vmlinuz ] && [ -f images/out/initramfs.img ] || { echo "the agent ramdisk is missing: make image (make demo does it)"; exit 1; }

step "A private provisioning network: namespace $NS, bridge br0 = 192.0.2.1/24, a tap for the VM"
ip netns add "$NS"
inns ip link set lo up
inns ip link add br0 type bridge
inns ip addr add 192.0.2.1/24 dev br0
inns ip link set br0 up
inns ip tuntap add tap0 mode tap
inns ip link set tap0 master br0 up

cat > "$DEMO_DIR/appliance.toml" <<TOML
data_dir = "data"
[api]
listen = "192.0.2.1:$PORT"
[agents]
heartbeat_secs = 1
missed_beats = 3
[dhcp]
server_id = "192.0.2.1"
interface = "br0"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.199"]
routers = ["192.0.2.1"]
dns = ["192.0.2.1"]
domain = "rack.demo"
lease_time_secs = 600
TOML

step "Starting cosm-appliance (API $URL, DHCP on br0; data in $DEMO_DIR/data)"
ip netns exec "$NS" "$BIN/cosm-appliance" serve --config "$DEMO_DIR/appliance.toml" >"$DEMO_DIR/appliance.log" 2>&1 &
APP_PID=$!
for _ in $(seq 1 100); do
  inns curl -sf "$URL/healthz" >/dev/null 2>&1 && break
  kill -0 "$APP_PID" 2>/dev/null || { echo "the appliance exited:"; cat "$DEMO_DIR/appliance.log"; exit 1; }
  sleep 0.1
done
inns curl -sf "$URL/healthz" >/dev/null || { echo "the appliance did not come up:"; cat "$DEMO_DIR/appliance.log"; exit 1; }
export COSM_URL=$URL
export COSM_TOKEN
COSM_TOKEN=$(cat "$DEMO_DIR/data/admin.token")
echo "   admin token written to $DEMO_DIR/data/admin.token (0600)"

step "Roles (seeded) and a rule: QEMU NICs with >= 4 CPUs become hypervisors"
ctl roles list
ctl rules add --role host --priority 10 --mac-prefix 52:54:00 --min-cpus 4 --description "big QEMU machines are hypervisors"
ctl rules list

step "Registering machines by MAC"
ctl machines add 52:54:00:aa:bb:01 --role center --hostname center1 --ip 192.0.2.10
ctl machines add 52:54:00:aa:bb:02 --role web --hostname web1
ctl machines set-state 52:54:00:aa:bb:01 deploying --reason "installer started"
ctl machines set-state 52:54:00:aa:bb:01 deployed --reason "kickstart finished"
echo "   an illegal move is refused with the allowed states:"
ctl machines set-state 52:54:00:aa:bb:02 active || true

step "Powering on a virtual machine ($VM_MAC, 2 CPUs, 1 GiB, 8 GiB disk) with the agent ramdisk"
echo "   its MAC is pre-registered (no role), so its DHCP steps land on its timeline"
ctl machines add "$VM_MAC" --hostname vm1
ENROLL=$(ctl tokens add demo-ramdisk --scope enroll)
truncate -s 8G "$DEMO_DIR/disk.img"
# `ip netns exec` execs QEMU, so $! is QEMU's own PID (a shell function would add a subshell).
ip netns exec "$NS" qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -display none -monitor none -no-reboot \
  -kernel images/out/vmlinuz -initrd images/out/initramfs.img \
  -append "console=ttyS0 cosm.appliance=$URL cosm.token=$ENROLL" \
  -serial "file:$DEMO_DIR/vm-console.log" \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$VM_MAC" \
  -drive "file=$DEMO_DIR/disk.img,format=raw,if=virtio" >/dev/null 2>&1 &
VM_PID=$!
shown=0
for i in $(seq 1 240); do
  lines=$(grep -c "cosm ramdisk\|enrolled as" "$DEMO_DIR/vm-console.log" 2>/dev/null || true)
  if [ "${lines:-0}" -gt "$shown" ]; then
    grep "cosm ramdisk\|enrolled as" "$DEMO_DIR/vm-console.log" | tail -n +$((shown + 1)) | sed "s/^/   [$((i / 2)) s] VM console: /"
    shown=$lines
  fi
  grep -q "enrolled as" "$DEMO_DIR/vm-console.log" 2>/dev/null && break
  kill -0 "$VM_PID" 2>/dev/null || { echo "QEMU exited"; break; }
  sleep 0.5
done
grep -q "enrolled as" "$DEMO_DIR/vm-console.log" 2>/dev/null || { echo "the VM's agent did not enrol within 120 s; its console:"; cat "$DEMO_DIR/vm-console.log"; exit 1; }

step "The rack: the VM enrolled itself with its inventory"
ctl machines list
ctl leases list

step "Timeline of the VM ($VM_MAC): DHCP from the appliance, then the agent"
ctl events "$VM_MAC"

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  step "DEMO_KEEP=1: the appliance (PID $APP_PID) and the VM (PID $VM_PID) keep running"
  echo "   export COSM_URL=$URL COSM_TOKEN=\$(cat $DEMO_DIR/data/admin.token)"
  echo "   ip netns exec $NS $BIN/cosmctl machines list"
  echo "   stop them with: kill $VM_PID $APP_PID; ip netns del $NS"
  exit 0
fi

step "Switching the VM off: three missed heartbeats later it is lost"
kill "$VM_PID"; wait "$VM_PID" 2>/dev/null || true; VM_PID=""
for _ in $(seq 1 40); do
  ctl --json machines show "$VM_MAC" | grep -q '"state": "lost"' && break
  sleep 0.5
done
ctl machines list --state lost
step "Done; stopping the appliance and removing the namespace (DEMO_KEEP=1 keeps them)"
