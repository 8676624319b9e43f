#!/usr/bin/env bash
# Builds images/out/guest-initrd.img: the tiny guest the hypervisor tests boot as QEMU TCG
# domains with the agent ramdisk's kernel (images/out/vmlinuz, made by images/build.sh).
# busybox-static and the kernel modules come from the same pinned, checksummed Debian
# packages as the ramdisk (images/common.sh). Reproducible like the ramdisk.
#
# Its /init prints on the serial console (console=ttyS0):
#   COSM-GUEST <cosm.marker= from the kernel command line> boot=<N>
#   counter 1
#   counter 2          (one a second, forever)
# N counts boots in the first sector of /dev/vda (text "COSMBOOT <N>"): read, plus one,
# written back and synced before the marker is printed, so a test can see a disk change
# survive a reboot or be undone by a snapshot revert. Without a disk N is 0.
# The ACPI power button powers the guest off (busybox acpid), so a graceful shutdown works.
#
# Networking (virtio-net): with the kernel's standard `ip=<client-ip>::<gw-ip>:<netmask>::
# <device>:off` on its command line (as initramfs-tools reads it), /init gives <device>
# that address (and a default route via <gw-ip>, when given) and prints, after the marker,
#   COSM-GUEST net <client-ip> dev=<device> mtu=<its MTU>
# and answers TCP port 22 with one line, `COSM-GUEST tcp22 <marker> <client-ip>`, to each
# connection (busybox nc). With `cosm.ping=<ip>` too, it pings <ip> about once a second,
# forever, printing each outcome with a sequence number:
#   ping 1 198.51.100.1 ok
#   ping 2 198.51.100.1 fail
set -euo pipefail
cd "$(dirname "$0")/.."
. images/common.sh

MODULES="virtio_pci virtio_blk virtio_net button evdev"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
OUT=${IMAGE_OUT:-images/out}
for tool in apt-get dpkg-deb depmod cpio gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "images/guest.sh needs $tool (Debian packages: apt, dpkg, kmod, cpio, gzip, coreutils; make deps installs them)" >&2; exit 1; }
done
[ -f "$OUT/vmlinuz" ] || { echo "$OUT/vmlinuz is missing: run images/build.sh first (make image does)" >&2; exit 1; }

kdeb=$(fetch "$KERNEL_PKG" "$KERNEL_VERSION" "$KERNEL_SHA256")
bdeb=$(fetch "$BUSYBOX_PKG" "$BUSYBOX_VERSION" "$BUSYBOX_SHA256")
WORK=$(mktemp -d /tmp/cosm-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$kdeb" "$WORK/k"
dpkg-deb -x "$bdeb" "$WORK/b"
depmod -b "$WORK/k" "$KREL"

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,etc/acpi/PWRF,lib/modules}
cp "$WORK/b/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
ln -s bin "$R/sbin"
module_list=$(modules_in_load_order "$WORK/k" $MODULES)
: > "$R/etc/modules.load"
while read -r m; do
  cp "$WORK/k/lib/modules/$KREL/$m" "$R/lib/modules/$(basename "$m")"
  basename "$m" >> "$R/etc/modules.load"
done <<< "$module_list"

# busybox acpid runs CONFDIR/<event> for an event: the power button's is PWRF/00000080.
cat > "$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "COSM-GUEST power button: powering off" > /dev/console
sync
poweroff -f
EOF
chmod 755 "$R/etc/acpi/PWRF/00000080"

# What answers each connection to TCP port 22 (nc -e): one line, then it closes.
cat > "$R/bin/cosm-tcp22" <<'EOF'
#!/bin/sh
echo "COSM-GUEST tcp22 $(cat /tmp/marker) $(cat /tmp/ip)"
EOF
chmod 755 "$R/bin/cosm-tcp22"

cat > "$R/init" <<'EOF'
#!/bin/sh
# COSM test guest: count this boot on the disk, print the marker, then a counter forever.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.load); do insmod "/lib/modules/$m" 2>/dev/null; done
# acpid opens the input devices that exist when it starts: wait for their nodes first.
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  ready=yes
  for e in /sys/class/input/event*; do [ -c "/dev/input/${e##*/}" ] || ready=no; done
  [ $ready = yes ] && break
  sleep 0.1
done
acpid -f -c /etc/acpi -l /dev/null -p /tmp/acpid.pid &
marker=$(sed -n 's/.*cosm\.marker=\([^ ]*\).*/\1/p' /proc/cmdline)
boot=0
# The disk may take a moment to appear after its driver loads.
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
if [ -b /dev/vda ]; then
  last=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^COSMBOOT \([0-9][0-9]*\)$/\1/p' | head -n 1)
  boot=$(( ${last:-0} + 1 ))
  printf 'COSMBOOT %d\n' "$boot" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
  sync
fi
echo "COSM-GUEST ${marker:--} boot=$boot" > /dev/console
# ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>
ipconf=$(sed -n 's/.*\(^\| \)ip=\([^ ]*\).*/\2/p' /proc/cmdline)
if [ -n "$ipconf" ]; then
  IFS=: read -r addr _server gw mask _host dev _auto <<IP
$ipconf
IP
  dev=${dev:-eth0}
  # The netmask as a prefix length: count the one bits of each octet.
  prefix=0
  for octet in $(echo "${mask:-255.255.255.0}" | tr . ' '); do
    while [ "$octet" -gt 0 ]; do
      prefix=$((prefix + (octet & 1)))
      octet=$((octet >> 1))
    done
  done
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    [ -e "/sys/class/net/$dev" ] && break
    sleep 0.1
  done
  ip link set lo up
  ip link set "$dev" up
  ip addr add "$addr/$prefix" dev "$dev"
  [ -n "$gw" ] && ip route add default via "$gw" dev "$dev"
  echo "${marker:--}" > /tmp/marker
  echo "$addr" > /tmp/ip
  echo "COSM-GUEST net $addr dev=$dev mtu=$(cat "/sys/class/net/$dev/mtu" 2>/dev/null)" > /dev/console
  # -ll with -e: a server that stays, answering each connection with cosm-tcp22.
  (while true; do nc -ll -p 22 -e /bin/cosm-tcp22 >/dev/null 2>&1; sleep 1; done) &
  target=$(sed -n 's/.*cosm\.ping=\([^ ]*\).*/\1/p' /proc/cmdline)
  if [ -n "$target" ]; then
    (
      n=0
      while true; do
        n=$((n + 1))
        # -W 1: a lost ping has already taken its second.
        if ping -c 1 -W 1 "$target" >/dev/null 2>&1; then
          echo "ping $n $target ok" > /dev/console
          sleep 1
        else
          echo "ping $n $target fail" > /dev/console
        fi
      done
    ) &
  fi
fi
i=0
while true; do
  i=$((i + 1))
  echo "counter $i" > /dev/console
  sleep 1
done
EOF
chmod 755 "$R/init"

mkdir -p "$OUT"
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -n -9 > "$OUT/guest-initrd.img"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/guest-initrd.img"
printf '%-28s %10s  %s\n' "$OUT/guest-initrd.img" "$(stat -c %s "$OUT/guest-initrd.img")" "$(sha256sum "$OUT/guest-initrd.img" | cut -d' ' -f1)"
echo "guest modules: $(tr '\n' ' ' < "$R/etc/modules.load")"
