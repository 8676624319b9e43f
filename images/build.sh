#!/usr/bin/env bash
# `make image`: builds the agent ramdisk — images/out/vmlinuz and images/out/initramfs.img —
# from pinned Debian packages (checksums verified), busybox-static, the NIC and disk modules
# real servers and VMs need, and cosm-agent. Reproducible: the same inputs give the same
# sha256 (fixed mtimes, sorted cpio, gzip -n). Budget: initramfs <= 40 MB.
#
# The ramdisk's /init loads the modules in dependency order, brings up every NIC, takes a
# DHCP lease on the first that gets one (busybox udhcpc), and runs
# `cosm-agent run --cmdline /proc/cmdline`, so the kernel command line carries
# cosm.appliance=URL and cosm.token=TOKEN. With cosm.install=<plan URL> it instead runs
# `cosm-agent install --plan <plan URL>` (an image install) and reboots, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

. images/common.sh
# Network and disk drivers: VMs (virtio), Intel NICs, SATA and NVMe disks; and ext4 for image
# installs (`cosm-agent install` mounts the installed root to configure it). Debian's kernel
# has ext4, jbd2, mbcache and crc16 as modules (CONFIG_EXT4_FS=m); ext4 and jbd2 ask the crypto
# API for "crc32c" at mount time, which modules.dep does not list and this ramdisk has no
# modprobe to load on demand: crc32c_generic (and crc32c-intel, which fails harmlessly on a CPU
# without SSE4.2) are loaded before ext4. The partition-table parsers (GPT, MBR) are built in.
# Their dependencies come from modules.dep.
MODULES="virtio_pci virtio_net e1000 e1000e igb ixgbe virtio_blk virtio_scsi sd_mod ahci nvme crc32c_generic crc32c_intel ext4"
BUDGET_BYTES=$((40 * 1024 * 1024))
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

OUT=${IMAGE_OUT:-images/out}
AGENT=${AGENT_BIN:-target/release/cosm-agent}
for tool in apt-get dpkg-deb depmod cpio gzip sha256sum strip ldd; do
  command -v "$tool" >/dev/null || { echo "make image needs $tool (Debian packages: apt, dpkg, kmod, cpio, gzip, coreutils, binutils, libc-bin; make deps installs them)" >&2; exit 1; }
done
[ -x "$AGENT" ] || { echo "$AGENT is missing: cargo build --release -p cosm-agent --no-default-features (make image does this)" >&2; exit 1; }
# The ramdisk carries no libvirt: its agent must be built without the `libvirt` feature.
if ldd "$AGENT" | grep -q libvirt; then
  echo "$AGENT links libvirt: build it with cargo build --release -p cosm-agent --no-default-features (make image does this)" >&2
  exit 1
fi

mkdir -p "$OUT"
kdeb=$(fetch "$KERNEL_PKG" "$KERNEL_VERSION" "$KERNEL_SHA256")
bdeb=$(fetch "$BUSYBOX_PKG" "$BUSYBOX_VERSION" "$BUSYBOX_SHA256")

WORK=$(mktemp -d /tmp/cosm-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$kdeb" "$WORK/k"
dpkg-deb -x "$bdeb" "$WORK/b"
depmod -b "$WORK/k" "$KREL"

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,run,tmp,etc,var/lib/cosm-agent,usr/share/udhcpc,lib/modules}
cp "$WORK/b/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
ln -s bin "$R/sbin"

# Modules in load order: each module after its dependencies (modules.dep lists them).
module_list=$(modules_in_load_order "$WORK/k" $MODULES)
mapfile -t ORDER <<< "$module_list"
: > "$R/etc/modules.load"
for m in "${ORDER[@]}"; do
  cp "$WORK/k/lib/modules/$KREL/$m" "$R/lib/modules/$(basename "$m")"
  echo "$(basename "$m")" >> "$R/etc/modules.load"
done

# The agent and the shared libraries it links.
strip -o "$R/bin/cosm-agent" "$AGENT"
for lib in $(ldd "$AGENT" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done

cat > "$R/usr/share/udhcpc/default.script" <<'SH'
#!/bin/sh
# busybox udhcpc hook: configure the lease on the interface.
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "cosm ramdisk: $interface has $ip" > /dev/console ;;
esac
exit 0
SH
chmod 755 "$R/usr/share/udhcpc/default.script"

cat > "$R/init" <<'SH'
#!/bin/sh
# COSM agent ramdisk: drivers, network, then the agent (restarted if it ever exits).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "cosm ramdisk: loading drivers" > /dev/console
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/modules.load
ip link set lo up
sleep 1
got=""
for _ in 1 2 3 4 5; do
  for path in /sys/class/net/*; do
    n=${path##*/}
    [ "$n" = lo ] && continue
    ip link set "$n" up
    if udhcpc -i "$n" -n -q -t 4 -T 2 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; then got=$n; break 2; fi
  done
done
[ -n "$got" ] || echo "cosm ramdisk: no DHCP lease on any interface" > /dev/console
# Installer stand-in (tests and the demo only: CentOS media cannot be downloaded there).
# Booted with inst.ks=URL like the real installer, it fetches the kickstart and makes the
# calls its %post makes: the agent binary and unit from the appliance, the agent's
# enrolment (--enroll-only, credential into the "installed" tree), and the install report;
# then it reboots, and the next network boot goes to the local disk.
ks=$(sed -n 's/.*inst\.ks=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$ks" ]; then
  say() { echo "cosm installer stand-in: $*" > /dev/console; }
  say "fetching the kickstart $ks"
  T=/mnt/sysimage
  mkdir -p $T/usr/local/bin $T/etc/cosm $T/etc/systemd/system $T/var/lib/cosm-agent
  if wget -q -O /tmp/ks.cfg "$ks"; then
    appliance=$(sed -n "s/^appliance='\(.*\)'\$/\1/p" /tmp/ks.cfg | head -n 1)
    mac=$(sed -n "s/^mac='\(.*\)'\$/\1/p" /tmp/ks.cfg | head -n 1)
    token=$(sed -n "s/^token='\(.*\)'\$/\1/p" /tmp/ks.cfg | head -n 1)
    say "kickstart for $mac: $(grep -c . /tmp/ks.cfg) lines; running the %post steps"
    if wget -q -O $T/usr/local/bin/cosm-agent "$appliance/boot/cosm-agent" &&
       chmod 0755 $T/usr/local/bin/cosm-agent &&
       wget -q -O $T/etc/systemd/system/cosm-agent.service "$appliance/boot/cosm-agent.service" &&
       printf 'appliance = "%s"\nmac = "%s"\nstate_dir = "%s"\n' "$appliance" "$mac" "$T/var/lib/cosm-agent" > $T/etc/cosm/agent.toml &&
       $T/usr/local/bin/cosm-agent run --enroll-only --config $T/etc/cosm/agent.toml --token "$token" > /dev/console 2>&1; then
      ok=true; msg="installer stand-in: agent installed and enrolled"
    else
      ok=false; msg="installer stand-in: a %post step failed"
    fi
    say "$msg; reporting"
    if wget -q -O /dev/null --header "Authorization: Bearer $token" --header "Content-Type: application/json" \
      --post-data "{\"mac\": \"$mac\", \"ok\": $ok, \"message\": \"$msg\"}" "$appliance/api/v1/agent/install-report"; then
      say "install reported; rebooting"
    else
      say "the install report failed"
    fi
  else
    say "cannot fetch the kickstart"
  fi
  sleep 2
  reboot -f
fi
# Image install: booted with cosm.install=<plan URL> (the URL carries the install token), the
# agent writes the plan's image onto the disk, configures and enrols the installed system
# and reports to the appliance; then the machine reboots, success or not (the next network
# boot goes to the local disk, or back here if the appliance says so).
plan=$(sed -n 's/.*cosm\.install=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$plan" ]; then
  echo "cosm ramdisk: installing from an image (cosm.install=)" > /dev/console
  /bin/cosm-agent install --plan "$plan" > /dev/console 2>&1
  rc=$?
  case $rc in
    0) echo "cosm ramdisk: install done and reported; rebooting" > /dev/console ;;
    2) echo "cosm ramdisk: install done, but the report did not reach the appliance; rebooting" > /dev/console ;;
    *) echo "cosm ramdisk: install FAILED (cosm-agent exit status $rc, see above); rebooting" > /dev/console ;;
  esac
  sleep 2
  reboot -f
fi
echo "cosm ramdisk: starting cosm-agent" > /dev/console
while true; do
  /bin/cosm-agent run --cmdline /proc/cmdline --state-dir /var/lib/cosm-agent > /dev/console 2>&1
  echo "cosm ramdisk: cosm-agent exited; restarting in 5 s" > /dev/console
  sleep 5
done
SH
chmod 755 "$R/init"

cp "$WORK/k/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
# The agent and its unit beside the ramdisk: the appliance serves them to installers'
# %post (boot.agent_dir).
cp "$R/bin/cosm-agent" "$OUT/cosm-agent"
cp crates/cosm-agent/cosm-agent.service "$OUT/cosm-agent.service"
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -n -9 > "$OUT/initramfs.img"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/vmlinuz" "$OUT/initramfs.img" "$OUT/cosm-agent" "$OUT/cosm-agent.service"

size=$(stat -c %s "$OUT/initramfs.img")
printf '%-22s %10s  %s\n' file bytes sha256
for f in vmlinuz initramfs.img; do
  printf '%-22s %10s  %s\n' "$OUT/$f" "$(stat -c %s "$OUT/$f")" "$(sha256sum "$OUT/$f" | cut -d' ' -f1)"
done
echo "modules: $(wc -l < "$R/etc/modules.load") ($(tr '\n' ' ' < "$R/etc/modules.load"))"
if [ "$size" -gt "$BUDGET_BYTES" ]; then
  echo "initramfs is $size bytes, over the 40 MB budget" >&2
  exit 1
fi
