#!/usr/bin/env bash
# `make os-image ROLE=<role>`: a reproducible GPT disk image of a minimized Debian 12
# (bookworm) with the COSM agent inside, for installs that write an image to the disk
# instead of running an installer. Roles: base, host, storage, web, center (images/os/rootfs.sh
# says what each adds).
#
#   images/os-image.sh [ROLE]                  build images/out/os/cosm-ROLE-bookworm.img.zst
#                                              and its .manifest.json
#   images/os-image.sh --update-lock [ROLE]    resolve the role's packages against Debian's
#                                              mirror and write images/os/ROLE.lock
#
# The lock lists every package (name, version, architecture, sha256 of the .deb). A build
# downloads the .debs it lacks into images/cache/os/, checks every sha256, and installs
# from those files only (a local repository), so it works offline once cached. The root
# file system is cached too (images/cache/os/rootfs/), keyed by the lock and the scripts
# that shape it; the agent and the per-image files go in after it, so a new agent costs
# seconds.
#
# Disk layout (the installer relies on it): GPT; partition 1 `esp` (FAT32, 64 MiB,
# LegacyBIOSBootable, syslinux for BIOS with gptmbr.bin in the first 440 bytes, systemd-boot
# as EFI/BOOT/BOOTX64.EFI, kernel and initrd); partition 2 `root` (ext4, the last one, fixed
# PARTUUID and UUID, sized to its content plus ~25%, grown at first boot).
#
# Environment: IMAGE_OUT (output folder, default images/out/os), AGENT_BIN (the agent
# binary; default images/out/cosm-agent, images/out/cosm-agent-libvirt for `host`),
# SOURCE_DATE_EPOCH (default 1700000000), OS_CACHE (default images/cache/os),
# ZSTD_LEVEL (default 3), OS_TMP (where the root file system is unpacked; default /dev/shm
# when it has 3 GiB free).
set -euo pipefail
cd "$(dirname "$0")/.."
. images/common.sh
. images/os/rootfs.sh

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export SOURCE_DATE_EPOCH
OUT=${IMAGE_OUT:-images/out/os}
OSCACHE=$(realpath -m "${OS_CACHE:-images/cache/os}")
ZSTD_LEVEL=${ZSTD_LEVEL:-3}
ESP_MIB=64
T0=$(date +%s.%N)

update=false
case ${1:-} in
  --update-lock) update=true; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "unknown option $1 (see $0 --help)" >&2; exit 2 ;;
esac
ROLE=${1:-base}
role_packages "$ROLE" >/dev/null
LOCK=images/os/$ROLE.lock
NAME=cosm-$ROLE-$OS_RELEASE

elapsed() { printf '%5.1fs' "$(echo "$(date +%s.%N) - $T0" | bc)"; }
say() { printf '[%s] os-image %s: %s\n' "$(elapsed)" "$ROLE" "$*"; }
die() { printf 'os-image %s: %s\n' "$ROLE" "$*" >&2; exit 1; }
mib() { echo "$(( ($1 + 524288) / 1048576 )) MiB"; }

for tool in mmdebstrap apt-get apt-ftparchive dpkg-deb dpkg-query mkfs.ext4 debugfs mkfs.fat mcopy sfdisk zstd jq sha256sum readelf tar bc flock; do
  command -v "$tool" >/dev/null || die "needs $tool (Debian packages: mmdebstrap, apt-utils, dpkg, e2fsprogs, dosfstools, mtools, fdisk, zstd, jq, binutils, bc; \`make deps\` installs them)"
done
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap installs packages into a chroot)"

# One build of a role at a time (they share the role's root file system cache).
mkdir -p "$OSCACHE"
exec 9> "$OSCACHE/.build-$ROLE.lock"
if ! flock -n 9; then
  say "waiting for another build of $ROLE ($OSCACHE/.build-$ROLE.lock)"
  flock 9
fi

WORK=$(mktemp -d /var/tmp/cosm-os-image.XXXXXX)
chmod 0755 "$WORK"  # apt's download sandbox (user _apt) writes into it
# The local repository of the lock's .debs, for mmdebstrap. It is under /tmp because
# mmdebstrap bind-mounts it into the chroot at the same path and empties the chroot's /tmp
# at the end: no trace of it (with its random name) is left in the image.
REPO=$(mktemp -d /tmp/cosm-os-repo.XXXXXX)
chmod 0755 "$REPO"
cleanup() {
  # mmdebstrap unmounts what it mounted. If it failed before its file-mirror hook undid its
  # bind mount of the repository, undo it (never anything else).
  local m
  while read -r m; do
    case $m in */tmp/mmdebstrap.*"$REPO") umount "$m" || true ;; esac
  done < <(findmnt -rn -o TARGET 2>/dev/null)
  rm -rf "$WORK" "$REPO" "${R:-}"
}
trap cleanup EXIT

# The cache file of a package: name_version_arch.deb, with the epoch's colon as %3a
# (what apt-get download names it).
deb_file() { # name version arch
  echo "$OSCACHE/${1}_${2//:/%3a}_${3}.deb"
}

# apt with its own package lists (images/cache/os/apt), so a build needs nothing from the
# host's apt state: the .debs of the lock are fetched from Debian's mirror by name and
# version.
private_apt() {
  local d=$OSCACHE/apt
  mkdir -p "$d/lists/partial" "$d/archives/partial"
  if [ ! -f "$d/sources.list" ]; then
    printf '%s\n' "${OS_MIRRORS[@]}" | sed 's/^deb /deb [signed-by=\/usr\/share\/keyrings\/debian-archive-keyring.gpg] /' > "$d/sources.list"
  fi
  apt-get -q -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d" \
    -o Dir::Cache::archives="$d/archives" -o Dir::Etc::SourceList="$d/sources.list" \
    -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::status=/dev/null \
    -o Acquire::Check-Valid-Until=false -o APT::Architecture="$OS_ARCH" \
    -o Debug::NoLocking=true -o APT::Sandbox::User=root "$@"
}

# --update-lock: install the role's packages from Debian's mirror with mmdebstrap (the same
# run as a build, so the same package set), keep the .debs it used, and write the lock.
update_lock() {
  local include n=0 name ver arch isize deb sum
  include=$(role_include "$ROLE")
  say "resolving $include against Debian's mirror"
  mkdir -p "$WORK/debs" "$WORK/bootdebs" "$OSCACHE"
  os_mmdebstrap "$ROLE" /dev/null "${OS_MIRRORS[@]}" -- \
    --skip=essential/unlink \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f '\${db:Status-Abbrev} \${Package} \${Version} \${Architecture} \${Installed-Size}\n' > $WORK/installed" \
    --customize-hook="sync-out /var/cache/apt/archives $WORK/debs"
  awk '$1 != "ii" { print "not installed: " $0; bad=1 } END { exit bad }' "$WORK/installed" >&2 ||
    die "mmdebstrap left packages not fully installed"
  say "downloading the boot loaders: $BOOT_PACKAGES"
  private_apt update >/dev/null
  # shellcheck disable=SC2086  # a list of names
  (cd "$WORK/bootdebs" && private_apt download $BOOT_PACKAGES >/dev/null)
  {
    echo "# COSM OS image lock: role $ROLE, Debian 12 ($OS_RELEASE) $OS_ARCH."
    echo "# Written by \`images/os-image.sh --update-lock $ROLE\` (make os-image-lock ROLE=$ROLE); do not edit."
    echo "# include: $include"
    echo "# boot: ${BOOT_PACKAGES// /,}"
    echo "# kind name version architecture sha256-of-the-.deb installed-size-KiB"
    while read -r _ name ver arch isize; do
      deb=$WORK/debs/${name}_${ver//:/%3a}_${arch}.deb
      [ -f "$deb" ] || die "mmdebstrap installed $name $ver $arch but its .deb is not in its cache"
      sum=$(sha256sum "$deb" | cut -d' ' -f1)
      cp "$deb" "$(deb_file "$name" "$ver" "$arch")"
      echo "pkg $name $ver $arch $sum $isize"
      n=$((n + 1))
    done < <(LC_ALL=C sort -k2,2 "$WORK/installed")
    for name in $BOOT_PACKAGES; do
      deb=$(ls "$WORK/bootdebs/${name}"_*.deb)
      ver=$(dpkg-deb -f "$deb" Version)
      arch=$(dpkg-deb -f "$deb" Architecture)
      isize=$(dpkg-deb -f "$deb" Installed-Size)
      cp "$deb" "$(deb_file "$name" "$ver" "$arch")"
      echo "boot $name $ver $arch $(sha256sum "$deb" | cut -d' ' -f1) $isize"
    done
  } > "$WORK/lock"
  mv "$WORK/lock" "$LOCK"
  # The ramdisk pins the same kernel (images/common.sh): it must be the same file.
  if ! grep -q "^pkg $KERNEL_PKG $KERNEL_VERSION amd64 $KERNEL_SHA256 " "$LOCK"; then
    echo "warning: the lock's $KERNEL_PKG is not images/common.sh's ($KERNEL_VERSION, $KERNEL_SHA256)" >&2
  fi
  say "wrote $LOCK: $n packages (+ $(echo "$BOOT_PACKAGES" | wc -w) boot loader packages)"
}

if $update; then
  update_lock
  exit 0
fi

[ -f "$LOCK" ] || die "$LOCK is missing: run images/os-image.sh --update-lock $ROLE (make os-image-lock ROLE=$ROLE)"
want=$(role_include "$ROLE")
have=$(sed -n 's/^# include: //p' "$LOCK")
[ "$want" = "$have" ] ||
  die "$LOCK was made for other packages ($have; images/os/rootfs.sh asks for $want): run images/os-image.sh --update-lock $ROLE"

# The .debs of the lock, downloaded when missing, every one checked.
mapfile -t LOCKED < <(grep -E '^(pkg|boot) ' "$LOCK")
mkdir -p "$OSCACHE"
missing=()
for line in "${LOCKED[@]}"; do
  read -r _ name ver arch sum _ <<< "$line"
  [ -f "$(deb_file "$name" "$ver" "$arch")" ] || missing+=("$line")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "resolving: ${#missing[@]} of ${#LOCKED[@]} .debs are not in $OSCACHE; updating the package lists"
  private_apt update >/dev/null 2>"$WORK/apt.err" || { cat "$WORK/apt.err" >&2; die "apt-get update failed (is Debian's mirror reachable?)"; }
  # All in one apt-get run (one connection, pipelined: seconds, where one run per package
  # takes a second each); if that fails, one by one below, which names the package.
  specs=()
  for line in "${missing[@]}"; do
    read -r _ name ver arch _ <<< "$line"
    if [ "$arch" = all ]; then specs+=("$name=$ver"); else specs+=("$name:$arch=$ver"); fi
  done
  say "downloading ${#missing[@]} .debs"
  t=$(date +%s)
  if (cd "$OSCACHE" && private_apt download "${specs[@]}" >/dev/null 2>"$WORK/apt.err"); then
    say "downloaded ${#missing[@]} .debs in $(( $(date +%s) - t )) s"
    missing=()
  fi
  i=0
  for line in "${missing[@]}"; do
    read -r _ name ver arch sum _ <<< "$line"
    i=$((i + 1))
    [ -f "$(deb_file "$name" "$ver" "$arch")" ] && continue
    say "downloading $i/${#missing[@]} $name $ver"
    spec="$name=$ver"
    [ "$arch" = all ] || spec="$name:$arch=$ver"
    (cd "$OSCACHE" && private_apt download "$spec" >/dev/null 2>"$WORK/apt.err") ||
      [ -f "$(deb_file "$name" "$ver" "$arch")" ] || {
        cat "$WORK/apt.err" >&2
        die "cannot download $name $ver ($arch): Debian's mirror no longer has it. Put that .deb (sha256 $sum) into $OSCACHE, or run images/os-image.sh --update-lock $ROLE to move the lock to the current versions"
      }
  done
fi
for line in "${LOCKED[@]}"; do
  read -r _ name ver arch sum _ <<< "$line"
  f=$(deb_file "$name" "$ver" "$arch")
  got=$(sha256sum "$f" | cut -d' ' -f1)
  [ "$got" = "$sum" ] ||
    die "$f ($name $ver) has sha256 $got but $LOCK says $sum: delete the file to download it again; if the mirror serves a different file for the same version, run images/os-image.sh --update-lock $ROLE and review the change"
done
say "${#LOCKED[@]} .debs checked against $LOCK"

# The root file system: cached by the lock and the scripts that shape it.
key=$(cat "$LOCK" images/os/rootfs.sh images/os/hook.sh images/common.sh <(echo "$SOURCE_DATE_EPOCH") | sha256sum | cut -c1-16)
ROOTFS=$OSCACHE/rootfs/$ROLE-$key.tar.zst
# The unpacked root file system: in memory when there is room (unpacking and removing
# thousands of files on a busy disk costs tens of seconds); OS_TMP chooses.
tmp=${OS_TMP:-}
if [ -z "$tmp" ]; then
  tmp=$WORK
  if [ -d /dev/shm ] && [ "$(df --output=avail -B1 /dev/shm | tail -n 1)" -gt $((3 << 30)) ]; then tmp=/dev/shm; fi
fi
R=$(mktemp -d "$tmp/cosm-os-root.XXXXXX")
mkdir -p "$OSCACHE/rootfs"
if [ -f "$ROOTFS" ]; then
  say "rootfs (cached) $ROOTFS"
  tar --zstd -xpf "$ROOTFS" --numeric-owner --xattrs --xattrs-include='*' -C "$R"
else
  read -r _ _ kver _ < <(grep "^pkg $KERNEL_PKG " "$LOCK")
  KDEB=$(deb_file "$KERNEL_PKG" "$kver" amd64)
  mapfile -t DEBS < <(grep '^pkg ' "$LOCK" | while read -r _ name ver arch _; do deb_file "$name" "$ver" "$arch"; done)
  t=$(date +%s)
  os_build_rootfs "$ROLE" "$WORK/rootfs.tar" "$REPO" "$KDEB" "$WORK/mmdebstrap.log" "${DEBS[@]}" || {
    grep -v "^rm: cannot remove" "$WORK/mmdebstrap.log" | tail -n 40 >&2
    cp "$WORK/mmdebstrap.log" /var/tmp/cosm-os-image-mmdebstrap.log
    die "mmdebstrap failed (its whole log: /var/tmp/cosm-os-image-mmdebstrap.log)"
  }
  say "rootfs installed in $(( $(date +%s) - t )) s; checking its kernel modules"
  tar -xpf "$WORK/rootfs.tar" --numeric-owner --xattrs --xattrs-include='*' -C "$R"
  os_check_modules "$R" "$KDEB" || die "the kernel modules are not consistent"
  say "rootfs: caching it"
  rm -f "$OSCACHE/rootfs/$ROLE-"*.tar.zst
  zstd -q -T0 -3 "$WORK/rootfs.tar" -o "$ROOTFS.tmp"
  mv "$ROOTFS.tmp" "$ROOTFS"
  rm -f "$WORK/rootfs.tar"
fi

# Exactly the lock's packages are installed, all of them fully.
dpkg-query --admindir="$R/var/lib/dpkg" -W -f '${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n' |
  LC_ALL=C sort > "$WORK/installed"
awk '{ print "ii  " $2, $3, $4 }' <(grep '^pkg ' "$LOCK") | LC_ALL=C sort > "$WORK/locked"
if ! diff -u "$WORK/locked" "$WORK/installed" > "$WORK/pkgdiff"; then
  cat "$WORK/pkgdiff" >&2
  die "the root file system's packages differ from $LOCK (above: - lock, + installed)"
fi

KREL_IMG=$(basename "$(ls -d "$R"/lib/modules/*)")
if [ ! -f "$R/boot/vmlinuz-$KREL_IMG" ] || [ ! -f "$R/boot/initrd.img-$KREL_IMG" ]; then die "no kernel or initrd in /boot"; fi

# The agent and its unit (per image: not in the cached root file system).
if [ "$ROLE" = host ]; then
  AGENT=${AGENT_BIN:-images/out/cosm-agent-libvirt}
else
  AGENT=${AGENT_BIN:-images/out/cosm-agent}
fi
[ -f "$AGENT" ] || die "$AGENT is missing: run \`make image\` (it builds images/out/cosm-agent and cosm-agent-libvirt), or set AGENT_BIN"
needed=$(readelf -d "$AGENT" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
if [ "$ROLE" != host ] && echo "$needed" | grep -q libvirt; then
  die "$AGENT links libvirt, which role $ROLE does not have: use images/out/cosm-agent (built --no-default-features)"
fi
for lib in $needed; do
  [ -e "$R/usr/lib/x86_64-linux-gnu/$lib" ] || [ -e "$R/usr/lib64/$lib" ] ||
    die "$AGENT needs $lib, which is not in the $ROLE image"
done
install -D -m 0755 "$AGENT" "$R/usr/local/bin/cosm-agent"
install -D -m 0644 crates/cosm-agent/cosm-agent.service "$R/etc/systemd/system/cosm-agent.service"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/cosm-agent.service "$R/etc/systemd/system/multi-user.target.wants/cosm-agent.service"
if [ "$ROLE" = host ]; then
  # As the host kickstart's %post: the agent drives this host's libvirt; VM files live
  # where QEMU can reach them.
  install -d -m 0711 "$R/var/lib/cosm-vms"
  install -D -m 0644 /dev/stdin "$R/etc/systemd/system/cosm-agent.service.d/hypervisor.conf" <<'UNIT'
[Unit]
After=libvirtd.service
Wants=libvirtd.service
[Service]
Environment=COSM_HYPERVISOR=qemu:///system COSM_VM_DIR=/var/lib/cosm-vms
UNIT
fi
AGENT_SHA256=$(sha256sum "$AGENT" | cut -d' ' -f1)
find "$R" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
touch -h -d "@$SOURCE_DATE_EPOCH" "$R"

# Sizes from the files themselves, not from where they are unpacked (tmpfs and ext4 count
# directories differently), so that the file system's size is the same on every machine.
# content: the bytes of the files (each hard-linked file once) and symbolic links;
# ext4: the 4 KiB blocks they take, and a block per directory and per long symbolic link.
sizes() { # dir -> "content-bytes ext4-bytes entries"
  find "$1" -printf '%y %i %s\n' | awk '
    $1 == "f" { if (!($2 in seen)) { seen[$2] = 1; c += $3; b += int(($3 + 4095) / 4096) * 4096 } }
    $1 == "l" { c += $3; if ($3 >= 60) b += 4096 }
    $1 == "d" { b += 4096 }
    { n++ } END { printf "%d %d %d\n", c, b, n }'
}
read -r ROOTFS_BYTES ROOTFS_ALLOC NFILES < <(sizes "$R")
say "rootfs $(mib "$ROOTFS_BYTES") unpacked ($ROOTFS_BYTES bytes, $NFILES files; $(mib "$ROOTFS_ALLOC") in 4 KiB blocks)"
size_report() {
  local d
  for d in usr/lib/modules usr/lib/x86_64-linux-gnu usr/bin usr/sbin usr/share usr/lib/systemd usr/lib/firmware boot var etc; do
    [ -e "$R/$d" ] && printf '    %-28s %s\n' "/$d" "$(mib "$(sizes "$R/$d" | cut -d' ' -f1)")"
  done
}
size_report
if [ "$ROLE" != base ] && [ -f images/os/base.lock ]; then
  # What the role adds over base, from the packages' Installed-Size.
  added=$(awk 'NR == FNR { if ($1 == "pkg") base[$2] = 1; next } $1 == "pkg" && !($2 in base) { n++; kib += $6; names = names " " $2 } END { printf "%d %d%s", n, kib, names }' images/os/base.lock "$LOCK")
  read -r n kib names <<< "$added"
  say "role $ROLE adds $n packages, $((kib / 1024)) MiB installed size (dpkg) over base:$names"
  if [ -f "$OUT/cosm-base-$OS_RELEASE.manifest.json" ]; then
    base_bytes=$(jq .rootfs_bytes "$OUT/cosm-base-$OS_RELEASE.manifest.json")
    say "role $ROLE: rootfs $(mib "$ROOTFS_BYTES"), $(mib $((ROOTFS_BYTES - base_bytes))) more than base's $(mib "$base_bytes") (measured)"
  fi
fi

# The disk: GPT, the ESP at 1 MiB, the root file system after it (content + ~25%, rounded
# up to 64 MiB), 1 MiB at the end for the backup GPT. The root file system is made in
# place (at its offset), without an intermediate image.
root_mib=$(( (ROOTFS_ALLOC * 5 / 4 + (64 << 20) - 1) / (64 << 20) ))
root_mib=$(( root_mib * 64 ))
RAW=$WORK/$NAME.img
esp_start=2048
root_start=$(( esp_start + ESP_MIB * 2048 ))
root_sectors=$(( root_mib * 2048 ))
disk_sectors=$(( root_start + root_sectors + 2048 ))
ESP_OFFSET=$(( esp_start * 512 ))
ROOT_OFFSET=$(( root_start * 512 ))
say "disk: GPT, esp ${ESP_MIB} MiB + root ${root_mib} MiB"
rm -f "$RAW"
truncate -s $((disk_sectors * 512)) "$RAW"
sfdisk -q --no-reread --no-tell-kernel "$RAW" <<EOT
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
start=$esp_start, size=$((ESP_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="esp", attrs="LegacyBIOSBootable"
start=$root_start, size=$root_sectors, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="root"
EOT

# ext4, with inodes for the files + 50% at least.
inodes=$(( root_mib * 1048576 / 16384 ))
[ "$inodes" -ge $((NFILES * 3 / 2)) ] || inodes=$((NFILES * 3 / 2))
say "ext4 ${root_mib} MiB, $inodes inodes"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -N "$inodes" -L root \
  -U "$ROOT_FS_UUID" -E "hash_seed=$ROOT_FS_UUID,root_owner=0:0,nodiscard,offset=$ROOT_OFFSET" \
  -d "$R" "$RAW" "${root_mib}M" > "$WORK/mkfs.ext4.log" 2>&1 || { cat "$WORK/mkfs.ext4.log" >&2; die "mkfs.ext4 failed"; }
# mkfs.ext4 -d copies the files' ctime (the time of extraction here): pin it, and the other
# inode times, to SOURCE_DATE_EPOCH.
(cd "$R" && find . -mindepth 1 -printf '%P\n') | LC_ALL=C sort > "$WORK/paths"
grep -q '"' "$WORK/paths" && die "a file name in the root file system has a double quote: debugfs cannot pin its times"
awk -v t="@$SOURCE_DATE_EPOCH" 'BEGIN { print "sif / ctime " t; print "sif / atime " t; print "sif / crtime " t }
  { printf "sif \"/%s\" ctime %s\nsif \"/%s\" atime %s\nsif \"/%s\" crtime %s\n", $0, t, $0, t, $0, t }' "$WORK/paths" > "$WORK/debugfs.cmds"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/debugfs.cmds" "$RAW?offset=$ROOT_OFFSET" > "$WORK/debugfs.log" 2>&1
grep -v -e '^debugfs' "$WORK/debugfs.log" | grep -q . && { head "$WORK/debugfs.log" >&2; die "debugfs could not pin the inode times"; }
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH e2fsck -fn "$RAW?offset=$ROOT_OFFSET" > "$WORK/fsck.log" 2>&1 || { cat "$WORK/fsck.log" >&2; die "the root file system does not pass e2fsck"; }

# The ESP: kernel, initrd, systemd-boot (UEFI), syslinux (BIOS); files copied in a fixed
# order with their times set, so the FAT file system is the same every build.
say "esp: kernel $(mib "$(stat -c %s "$R/boot/vmlinuz-$KREL_IMG")"), initrd $(mib "$(stat -c %s "$R/boot/initrd.img-$KREL_IMG")")"
B=$WORK/bootdebs
mkdir -p "$B"
for name in $BOOT_PACKAGES; do
  read -r _ _ ver arch _ <<< "$(grep "^boot $name " "$LOCK")"
  dpkg-deb -x "$(deb_file "$name" "$ver" "$arch")" "$B"
done
CMDLINE="root=PARTUUID=$ROOT_PARTUUID ro console=tty0 console=ttyS0,115200"
E=$WORK/esp
mkdir -p "$E/EFI/BOOT" "$E/loader/entries" "$E/syslinux"
cp "$R/boot/vmlinuz-$KREL_IMG" "$E/vmlinuz"
cp "$R/boot/initrd.img-$KREL_IMG" "$E/initrd.img"
cp "$B/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$E/EFI/BOOT/BOOTX64.EFI"
printf 'default cosm.conf\ntimeout 0\n' > "$E/loader/loader.conf"
printf 'title COSM %s (Debian 12)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$ROLE" "$CMDLINE" > "$E/loader/entries/cosm.conf"
printf 'SERIAL 0 115200\nDEFAULT cosm\nPROMPT 0\nTIMEOUT 0\nLABEL cosm\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' "$CMDLINE" > "$E/syslinux/syslinux.cfg"
find "$E" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# Made apart (64 MiB) and copied in: mtools misreads a FAT at an offset in a larger file.
ESP=$WORK/esp.img
# --invariant fixes the times and the volume id; -i after it sets the id.
mkfs.fat -C -F 32 -n ESP --invariant -i "$ESP_VOLUME_ID" "$ESP" $((ESP_MIB * 1024)) > "$WORK/mkfs.fat.log" 2>&1 ||
  { cat "$WORK/mkfs.fat.log" >&2; die "mkfs.fat failed"; }
# Directories first (each copied empty, which keeps its time), then the files, in sorted
# order: mcopy -s would follow the host's directory order.
mkdir -p "$WORK/empty"
(cd "$E" && find . -mindepth 1 -type d -printf '%P\n' | LC_ALL=C sort) | while read -r d; do
  rm -rf "$WORK/empty/${d##*/}"; mkdir "$WORK/empty/${d##*/}"
  touch -d "@$SOURCE_DATE_EPOCH" "$WORK/empty/${d##*/}"
  parent=$(dirname "$d"); [ "$parent" = . ] && parent=""
  TZ=UTC mcopy -s -m -i "$ESP" "$WORK/empty/${d##*/}" "::/$parent"
done
(cd "$E" && find . -type f -printf '%P\n' | LC_ALL=C sort) | while read -r f; do
  TZ=UTC mcopy -m -i "$ESP" "$E/$f" "::/$f"
done
"$B/usr/bin/syslinux" --install --directory /syslinux "$ESP"
# The syslinux installer stamps ldlinux.sys and ldlinux.c32 (and the deleted entries of
# their first copies) with the current time: set those directory entries' times too.
fat_time=$(TZ=UTC date -d "@$SOURCE_DATE_EPOCH" '+%H %M %S %Y %m %d')
read -r hh mm ss yy mo dd <<< "$fat_time"
ftime=$(( 10#$hh << 11 | 10#$mm << 5 | 10#$ss / 2 ))
fdate=$(( (10#$yy - 1980) << 9 | 10#$mo << 5 | 10#$dd ))
le16() { printf "\\\\x%02x\\\\x%02x" $(($1 & 255)) $(($1 >> 8)); }
stamp=$(printf '%s' "\\x00$(le16 $ftime)$(le16 $fdate)$(le16 $fdate)")
pinned=0
while read -r off; do
  [ $((off % 32)) = 0 ] || continue
  # bytes 13-19: creation time (10 ms, time, date), access date; 22-25: write time, date.
  printf '%b' "$stamp" | dd of="$ESP" bs=1 seek=$((off + 13)) conv=notrunc status=none
  printf '%b' "$(le16 $ftime)$(le16 $fdate)" | dd of="$ESP" bs=1 seek=$((off + 22)) conv=notrunc status=none
  pinned=$((pinned + 1))
done < <(LC_ALL=C grep -obaP '[L\xe5]DLINUX (SYS|C32)' "$ESP" | cut -d: -f1)
[ "$pinned" -ge 2 ] || die "did not find syslinux's files in the ESP to pin their times"
fsck.fat -n "$ESP" > "$WORK/fsck.fat.log" 2>&1 || { cat "$WORK/fsck.fat.log" >&2; die "the ESP does not pass fsck.fat"; }
dd if="$ESP" of="$RAW" bs=1M seek=$((ESP_OFFSET >> 20)) conv=notrunc status=none
rm -f "$ESP"
# BIOS: syslinux's GPT-aware MBR boot code in the first 440 bytes.
dd if="$B/usr/lib/SYSLINUX/gptmbr.bin" of="$RAW" bs=440 count=1 conv=notrunc status=none
RAW_SIZE=$(stat -c %s "$RAW")
RAW_SHA256=$(sha256sum "$RAW" | cut -d' ' -f1)

say "zstd -$ZSTD_LEVEL --long=27 of $(mib "$RAW_SIZE")"
mkdir -p "$OUT"
IMG=$OUT/$NAME.img.zst
MANIFEST=$OUT/$NAME.manifest.json
rm -f "$IMG" "$MANIFEST"
tz=$(date +%s.%N)
zstd -q -T0 "-$ZSTD_LEVEL" --long=27 "$RAW" -o "$IMG.tmp"
ZSTD_SECS=$(echo "$(date +%s.%N) - $tz" | bc)
mv "$IMG.tmp" "$IMG"
touch -d "@$SOURCE_DATE_EPOCH" "$IMG"
IMG_SIZE=$(stat -c %s "$IMG")
IMG_SHA256=$(sha256sum "$IMG" | cut -d' ' -f1)
say "zstd: $(mib "$IMG_SIZE") in $(printf '%.1f' "$ZSTD_SECS") s"

grep '^pkg ' "$LOCK" | jq -R -s 'split("\n") | map(select(length > 0) | split(" ") |
    {name: .[1], version: .[2], arch: .[3], sha256: .[4]})' > "$WORK/packages.json"
grep '^boot ' "$LOCK" | jq -R -s 'split("\n") | map(select(length > 0) | split(" ") |
    {name: .[1], version: .[2], arch: .[3], sha256: .[4]})' > "$WORK/boot.json"
jq -n -c --arg name "$NAME" --arg role "$ROLE" --arg file "$NAME.img.zst" \
  --argjson size "$IMG_SIZE" --arg sha256 "$IMG_SHA256" --argjson raw_size "$RAW_SIZE" \
  --arg raw_sha256 "$RAW_SHA256" --arg kernel "$KREL_IMG" --arg root_partuuid "$ROOT_PARTUUID" \
  --argjson sde "$SOURCE_DATE_EPOCH" --arg agent_sha256 "$AGENT_SHA256" \
  --argjson rootfs_bytes "$ROOTFS_BYTES" --arg root_fs_uuid "$ROOT_FS_UUID" \
  --arg esp_partuuid "$ESP_PARTUUID" --arg cmdline "$CMDLINE" --argjson root_fs_mib "$root_mib" \
  --slurpfile packages "$WORK/packages.json" --slurpfile boot "$WORK/boot.json" \
  '{name: $name, role: $role, release: "debian-12", file: $file, size: $size, sha256: $sha256,
    raw_size: $raw_size, raw_sha256: $raw_sha256, kernel: $kernel, root_partuuid: $root_partuuid,
    source_date_epoch: $sde, agent_sha256: $agent_sha256, rootfs_bytes: $rootfs_bytes,
    packages: $packages[0], root_fs_uuid: $root_fs_uuid, esp_partuuid: $esp_partuuid,
    kernel_cmdline: $cmdline, root_fs_mib: $root_fs_mib, boot_packages: $boot[0]}' > "$MANIFEST.tmp"
mv "$MANIFEST.tmp" "$MANIFEST"
touch -d "@$SOURCE_DATE_EPOCH" "$MANIFEST"

say "done"
printf '%-48s %12s  %s\n' file bytes sha256
printf '%-48s %12s  %s\n' "$IMG" "$IMG_SIZE" "$IMG_SHA256"
printf '%-48s %12s  %s\n' "$MANIFEST" "$(stat -c %s "$MANIFEST")" "$(sha256sum "$MANIFEST" | cut -d' ' -f1)"
printf '%-48s %12s  %s\n' "(raw disk image)" "$RAW_SIZE" "$RAW_SHA256"
printf 'packages %s, rootfs %s unpacked, kernel %s\n' "$(grep -c '^pkg ' "$LOCK")" "$(mib "$ROOTFS_BYTES")" "$KREL_IMG"
