# shellcheck shell=bash disable=SC2034  # the settings are used by images/os-image.sh
# What the OS images' root filesystems are made of: the packages of each role and the
# mmdebstrap run that installs them and shapes the system (sourced by images/os-image.sh;
# the caller has `set -euo pipefail` and is in the repository root). The built root
# filesystem is cached under a key that includes this file's sha256: change anything here
# and the next build makes the root filesystem again.

OS_RELEASE=bookworm
OS_ARCH=amd64
# Debian's mirror, for `--update-lock` only (a normal build installs from the cached .debs).
OS_MIRRORS=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# Fixed identities: the installer and the kernel command line find the root filesystem
# by them (root=PARTUUID=...), so they never change between builds.
ROOT_PARTUUID=6c6f6f72-636f-736d-0000-000000000002
ROOT_FS_UUID=6c6f6f72-636f-736d-0000-0000000000f2
ESP_PARTUUID=6c6f6f72-636f-736d-0000-000000000001
DISK_GUID=6c6f6f72-636f-736d-0000-000000000000
ESP_VOLUME_ID=c05e0001

# The base of every role. The pinned kernel is the agent ramdisk's (images/common.sh): the
# full flavour, whose modules real servers need (the cloud kernel has no AHCI, MegaRAID,
# e1000 or igb). apt: an installed system takes its security updates.
# systemd-resolved: DNS servers from the DHCP lease; systemd-timesyncd: the clock (the
# kickstart installs chrony); both are small.
# shellcheck disable=SC2153  # KERNEL_PKG comes from images/common.sh
BASE_PACKAGES="systemd-sysv udev dbus iproute2 openssh-server kmod e2fsprogs zstd initramfs-tools ca-certificates apt systemd-resolved systemd-timesyncd $KERNEL_PKG"

# What each role adds to the base (no Recommends: mmdebstrap installs none).
role_packages() { # role
  case $1 in
    base) echo "" ;;
    # KVM hypervisor: libvirt, QEMU, qemu-img (the agent makes VM disks with it), nftables
    # (the agent's tenant networks, crates/cosm-sdn). The agent is cosm-agent-libvirt.
    host) echo "libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils nftables" ;;
    # Block storage for the hosts over the network: an NBD server (the kickstart's NFS
    # and LIO targets are CentOS's choice; nbd-server is one small daemon).
    storage) echo "nbd-server" ;;
    # The web tier: nginx (the CentOS kickstart installs httpd and mod_ssl; nginx does TLS
    # itself).
    web) echo "nginx" ;;
    # The control node: what crates/cosm-kickstart/templates/center.ks.j2 installs
    # (mariadb-server, nftables), same names in Debian.
    center) echo "mariadb-server nftables" ;;
    *) echo "unknown role $1: base, host, storage, web or center" >&2; return 1 ;;
  esac
}

# The packages mmdebstrap is asked for, comma-separated and sorted (the lock records them,
# so a lock made for another list is noticed).
role_include() { # role
  local extra
  extra=$(role_packages "$1")
  # shellcheck disable=SC2086
  printf '%s\n' $BASE_PACKAGES $extra | LC_ALL=C sort -u | paste -sd, -
}

# Debs put on the ESP, not installed: the BIOS boot loader (syslinux, its installer and
# gptmbr.bin) and the UEFI one (systemd-boot). Pinned in the lock like the rest.
BOOT_PACKAGES="syslinux systemd-boot-efi"

# Kernel modules a server does not need (paths under /lib/modules/<version>/kernel/).
# Kept on purpose: ahci/libata, megaraid_sas, mpt3sas, hpsa, smartpqi, nvme, virtio, the
# server NICs (e1000, e1000e, igb, ixgbe, i40e, ice, bnxt_en, mlx5_core, tg3, ...), FC
# HBAs, ext4, xfs, vfat, btrfs, NFS/SMB/Ceph clients, md/dm, bridge, vxlan, nf_tables,
# kvm, tun, vhost, IPMI, hwmon. KEEP_MODULES below is checked after installation.
MODULE_EXCLUDES=(
  sound drivers/media drivers/staging drivers/infiniband drivers/isdn drivers/comedi
  drivers/iio drivers/mtd drivers/atm net/atm drivers/mmc drivers/memstick drivers/pcmcia
  drivers/firewire drivers/thunderbolt drivers/net/thunderbolt drivers/nfc net/nfc
  drivers/bluetooth net/bluetooth net/6lowpan
  drivers/net/wireless net/wireless net/mac80211 drivers/net/wwan net/ieee802154
  net/mac802154 drivers/net/ieee802154 drivers/net/can net/can drivers/net/hamradio
  net/ax25 net/netrom net/rose drivers/net/arcnet drivers/net/fddi drivers/net/wan
  drivers/net/usb drivers/usb/serial drivers/usb/gadget drivers/usb/atm drivers/usb/image
  drivers/usb/misc drivers/usb/usbip drivers/input/joystick drivers/input/touchscreen
  drivers/input/tablet drivers/video/fbdev drivers/platform/chrome drivers/platform/surface
  drivers/w1 drivers/hid lib/test_*.ko drivers/misc/habanalabs
  # Fibre Channel, FCoE and iSCSI HBAs, and SCSI cards of the last century: the image is
  # written to a local disk, which is what it boots from.
  drivers/scsi/lpfc drivers/scsi/qla2xxx drivers/scsi/qla4xxx drivers/scsi/bfa
  drivers/scsi/csiostor drivers/scsi/be2iscsi drivers/scsi/bnx2fc drivers/scsi/bnx2i
  drivers/scsi/fnic drivers/scsi/qedf drivers/scsi/qedi drivers/scsi/cxgbi drivers/scsi/fcoe
  drivers/scsi/libfc drivers/scsi/snic drivers/scsi/aic7xxx drivers/scsi/aic94xx
  drivers/scsi/pcmcia drivers/target/sbp
  # NICs of desktops, laptops, embedded boards and other architectures.
  drivers/net/ethernet/3com drivers/net/ethernet/8390 drivers/net/ethernet/adaptec
  drivers/net/ethernet/agere drivers/net/ethernet/alteon drivers/net/ethernet/atheros
  drivers/net/ethernet/brocade drivers/net/ethernet/cavium drivers/net/ethernet/dec
  drivers/net/ethernet/dlink drivers/net/ethernet/fealnx.ko drivers/net/ethernet/fujitsu
  drivers/net/ethernet/jme.ko drivers/net/ethernet/marvell drivers/net/ethernet/micrel
  drivers/net/ethernet/myricom drivers/net/ethernet/natsemi drivers/net/ethernet/neterion
  drivers/net/ethernet/netronome drivers/net/ethernet/nvidia drivers/net/ethernet/packetengines
  drivers/net/ethernet/qualcomm drivers/net/ethernet/rdc drivers/net/ethernet/silan
  drivers/net/ethernet/sis drivers/net/ethernet/smsc drivers/net/ethernet/stmicro
  drivers/net/ethernet/sun drivers/net/ethernet/synopsys drivers/net/ethernet/ti
  drivers/net/ethernet/via drivers/net/ethernet/wiznet drivers/net/ethernet/xircom
  drivers/net/ethernet/toshiba drivers/net/ethernet/socionext drivers/net/ethernet/dnet.ko
  # Desktop, embedded and legacy file systems and protocols.
  fs/ocfs2 fs/gfs2 fs/dlm fs/f2fs fs/ubifs fs/jffs2 fs/afs net/rxrpc fs/nilfs2 fs/reiserfs
  fs/jfs fs/orangefs fs/coda fs/hfs fs/hfsplus fs/omfs fs/qnx4 fs/qnx6 fs/ufs fs/minix
  fs/sysv fs/befs fs/bfs fs/efs fs/hpfs fs/adfs fs/affs fs/ntfs3 fs/ntfs fs/cramfs
  fs/romfs net/tipc net/batman-adv net/appletalk net/x25 net/lapb net/phonet net/caif
  net/dccp net/l2tp net/kcm net/qrtr
  # GPUs: all but the drivers of servers' BMC consoles and VMs (see MODULE_KEEPS).
  drivers/gpu
)
# Re-included: under drivers/gpu, the DRM core and helpers, ASPEED (ast) and Matrox G200
# (mgag200) BMC graphics, virtio-gpu, and the tiny drivers (simpledrm, bochs, cirrus);
# mtd.ko, which Solarflare NICs (sfc) need; the HID core, generic HID and USB HID (a BMC's
# virtual keyboard).
MODULE_KEEPS=(drivers/gpu/drm/drm*.ko drivers/gpu/drm/ttm drivers/gpu/drm/ast
  drivers/gpu/drm/mgag200 drivers/gpu/drm/virtio drivers/gpu/drm/tiny drivers/mtd/mtd.ko
  drivers/hid/hid.ko drivers/hid/hid-generic.ko drivers/hid/usbhid)
KEEP_MODULES="ahci libata megaraid_sas mpt3sas hpsa smartpqi nvme virtio_blk virtio_scsi
  virtio_net virtio_pci e1000 e1000e igb ixgbe i40e ice bnxt_en mlx5_core tg3 ext4 xfs vfat
  md_mod raid1 raid456 dm_mod dm_crypt bridge vxlan nf_tables kvm kvm_intel kvm_amd tun vhost
  vhost_net ast mgag200 virtio_gpu usbhid hid_generic sd_mod sfc cifs nfsv4 megaraid_mbox
  aacraid mptsas mpi3mr qede mlx4_en be2net enic ena"

# Modules that need one of the excluded ones (a PCMCIA NIC needs pcmcia.ko, ...) are
# excluded too: os_module_closure lists them from the kernel package's modules.dep, and a
# build puts them here.
MODULE_EXCLUDES_DEPENDENT=()

# Prints the modules (paths under /lib/modules/<version>/) that depend, directly or not, on
# an excluded module and are not excluded themselves. $1: the kernel .deb.
os_module_closure() { # kernel-deb
  local full krel
  full=$(mktemp -d /var/tmp/cosm-kernel.XXXXXX)
  dpkg-deb --fsys-tarfile "$1" | tar -x -C "$full" --wildcards '*/modules/*'
  krel=$(basename "$(ls -d "$full"/lib/modules/*)")
  depmod -b "$full" "$krel"
  printf '%s\n' "${MODULE_EXCLUDES[@]}" > "$full/excludes"
  printf '%s\n' "${MODULE_KEEPS[@]}" > "$full/keeps"
  # dpkg's patterns are fnmatch(3) ones without FNM_PATHNAME: `*` matches `/` too.
  awk -F': *' '
    function re(p) { gsub(/[.+]/, "\\\\&", p); gsub(/\*/, ".*", p); return p }
    FILENAME ~ /excludes$/ { ex[n++] = ($0 ~ /\.ko$/) ? "^kernel/" re($0) "$" : "^kernel/" re($0) "/"; next }
    FILENAME ~ /keeps$/ { kp[k++] = ($0 ~ /\.ko$/) ? "^kernel/" re($0) "$" : "^kernel/" re($0) "/"; next }
    { deps[$1] = $2; mods[$1] = 1 }
    END {
      for (m in mods) {
        for (i = 0; i < n; i++) if (m ~ ex[i]) out[m] = 1
        for (i = 0; i < k; i++) if (m ~ kp[i]) delete out[m]
      }
      do {
        changed = 0
        for (m in mods) {
          if (m in out) continue
          c = split(deps[m], d, " ")
          for (i = 1; i <= c; i++) if (d[i] in out) { out[m] = 1; extra[m] = 1; changed = 1; break }
        }
      } while (changed)
      for (m in extra) print m
    }' "$full/excludes" "$full/keeps" "$full/lib/modules/$krel/modules.dep" | LC_ALL=C sort
  rm -rf "$full"
}

# dpkg options: no documentation but the copyrights, no translations, and the modules above.
os_dpkgopts() {
  local d k
  for d in man info locale lintian bash-completion; do
    echo "path-exclude=/usr/share/$d/*"
  done
  echo "path-exclude=/usr/share/doc/*"
  echo "path-include=/usr/share/doc/*/copyright"
  # glibc's character set converters (8 MB): only the Unicode ones and Latin-1.
  echo "path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*"
  for k in 'gconv-modules*' 'UTF-*.so' UNICODE.so ISO8859-1.so; do
    echo "path-include=/usr/lib/x86_64-linux-gnu/gconv/$k"
  done
  for d in "${MODULE_EXCLUDES[@]}"; do
    case $d in
      *.ko) echo "path-exclude=/lib/modules/*/kernel/$d" ;;
      *) echo "path-exclude=/lib/modules/*/kernel/$d/*" ;;
    esac
  done
  for d in "${MODULE_EXCLUDES_DEPENDENT[@]}"; do
    echo "path-exclude=/lib/modules/*/$d"
  done
  for k in "${MODULE_KEEPS[@]}"; do
    case $k in
      *.ko) echo "path-include=/lib/modules/*/kernel/$k" ;;
      *) echo "path-include=/lib/modules/*/kernel/$k/*" ;;
    esac
  done
}

# Writes /etc/fstab before the kernel is installed (the initramfs then carries fsck.ext4
# for the root file system). x-systemd.growfs: the root file system grows to its partition
# at boot (the installer grows the partition).
#
# Also before the kernel: the initramfs settings. MODULES=most (the default: the image
# runs on machines it has never seen) puts every storage, NIC and file system driver in
# it; the root file system is ext4 on a local disk, so the hook below drops the NIC
# drivers, the network stack's modules and the other file systems.
os_essential_hook() { # rootdir
  printf 'UUID=%s / ext4 defaults,errors=remount-ro,x-systemd.growfs 0 1\n' "$ROOT_FS_UUID" > "$1/etc/fstab"
  mkdir -p "$1/etc/initramfs-tools/hooks" "$1/etc/initramfs-tools/conf.d"
  cat > "$1/etc/initramfs-tools/hooks/cosm-local-root" <<'HOOK'
#!/bin/sh
# COSM OS image: the root file system is ext4 on a local disk. The initramfs needs no NIC
# drivers, network modules or other file systems (MODULES=most puts them all in).
PREREQ=""
case "$1" in prereqs) echo "$PREREQ"; exit 0 ;; esac
m="${DESTDIR}${MODULESDIR}/kernel"
rm -rf "$m/drivers/net" "$m/net" "$m/drivers/target"
for d in "$m"/fs/*; do
  case "${d##*/}" in ext4|jbd2|mbcache.ko) ;; *) rm -rf "$d" ;; esac
done
HOOK
  chmod 0755 "$1/etc/initramfs-tools/hooks/cosm-local-root"
  echo 'COMPRESSLEVEL=19' > "$1/etc/initramfs-tools/conf.d/cosm.conf"
}

# Shapes the installed system (runs in the chroot's root directory $1 after every package
# is installed; the agent and per-image files come later, outside this cache).
os_customize_hook() { # rootdir
  local R=$1
  echo cosm > "$R/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tcosm\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"

  # apt on the installed system: Debian's mirror (the build used a local copy of the lock).
  rm -f "$R/etc/apt/sources.list"
  cat > "$R/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

  # Network: DHCP on every Ethernet NIC with systemd-networkd; DNS from the lease through
  # systemd-resolved's stub resolver.
  mkdir -p "$R/etc/systemd/network"
  cat > "$R/etc/systemd/network/90-cosm-dhcp.network" <<'EOF'
# COSM OS image: DHCP on every Ethernet NIC (the installer may add a static
# configuration with a lower number, which wins).
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
  # Boot waits for one NIC to be configured, 30 s at most (not the default 2 minutes for
  # every NIC): unplugged ports must not hold the agent back.
  mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
  cat > "$R/etc/systemd/system/systemd-networkd-wait-online.service.d/cosm.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF

  # SSH: no host keys in the image (every machine would share them); made at first boot.
  rm -f "$R"/etc/ssh/ssh_host_*
  cat > "$R/etc/systemd/system/cosm-ssh-keygen.service" <<'EOF'
# COSM OS image: the SSH host keys are made at first boot (the image ships none).
[Unit]
Description=Generate SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service multi-user.target
EOF

  chroot "$R" systemctl enable -q systemd-networkd.service systemd-resolved.service \
    systemd-networkd-wait-online.service cosm-ssh-keygen.service serial-getty@ttyS0.service
}

# Checks the kernel modules of the root file system $1 against the whole kernel package
# $2 (a .deb): every module left has all the modules it depends on (modules.dep of the
# whole package, where depmod saw every module), and the modules a server needs are there.
os_check_modules() { # rootdir kernel-deb
  local R=$1 full krel m missing
  krel=$(basename "$(ls -d "$R"/usr/lib/modules/*)")
  full=$(mktemp -d /var/tmp/cosm-kernel.XXXXXX)
  dpkg-deb --fsys-tarfile "$2" | tar -x -C "$full" --wildcards '*/modules/*'
  depmod -b "$full" "$krel"
  missing=$(awk -F': *' 'NR == FNR { deps[$1] = $2; next } { have[$1] = 1 }
    END { for (m in have) { n = split(deps[m], d, " "); for (i = 1; i <= n; i++) if (!(d[i] in have)) print m " needs " d[i] } }' \
    "$full/lib/modules/$krel/modules.dep" "$R/usr/lib/modules/$krel/modules.dep" | LC_ALL=C sort)
  rm -rf "$full"
  if [ -n "$missing" ]; then
    echo "kernel modules left without a module they need (exclude them too, or keep what they need: MODULE_EXCLUDES in images/os/rootfs.sh):" >&2
    echo "$missing" >&2
    return 1
  fi
  for m in $KEEP_MODULES; do
    grep -q -E "(^|/)${m//_/[_-]}\.ko(\.[a-z]+)?:" "$R/usr/lib/modules/$krel/modules.dep" ||
      grep -q -E "/${m//_/[_-]}\.ko\$" "$R/usr/lib/modules/$krel/modules.builtin" || {
        echo "kernel module $m is missing from the image: check MODULE_EXCLUDES in images/os/rootfs.sh" >&2
        return 1
      }
  done
}

# Installs the role's packages from the mirror lines given (a normal build: the local
# repository made from the lock's .debs) into the tarball $3. Extra mmdebstrap arguments
# after `--`.
os_mmdebstrap() { # role tarball mirror... [-- extra-args...]
  local role=$1 out=$2 opt
  shift 2
  local mirrors=() extra=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; extra=("$@"); break; fi
    mirrors+=("$1"); shift
  done
  # The extra arguments come first: their hooks run before ours (which, for one, points
  # /etc/resolv.conf at systemd-resolved, so nothing in the chroot resolves names after it).
  local args=("${extra[@]}" --variant=essential --mode=root --format=tar --architectures="$OS_ARCH"
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --include="$(role_include "$role")"
    --aptopt='Acquire::Check-Valid-Until "false"'
    --aptopt='Acquire::Languages "none"'
    --essential-hook="$PWD/images/os/hook.sh essential \"\$1\""
    --customize-hook="$PWD/images/os/hook.sh customize \"\$1\"")
  while read -r opt; do args+=(--dpkgopt="$opt"); done < <(os_dpkgopts)
  # The hooks are the functions above, run by images/os/hook.sh.
  SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH mmdebstrap "${args[@]}" "$OS_RELEASE" "$out" "${mirrors[@]}"
}

# A build's root file system: the role's packages from exactly the given .debs (a local
# repository of them, $3, which must be under /tmp: see images/os-image.sh), into the
# tarball $2; mmdebstrap's output goes to the log $5. $4: the kernel .deb, whose
# modules.dep says which modules need the excluded ones.
os_build_rootfs() { # role tarball repo-dir kernel-deb log deb...
  local role=$1 out=$2 repo=$3 kdeb=$4 log=$5 deb
  shift 5
  mapfile -t MODULE_EXCLUDES_DEPENDENT < <(os_module_closure "$kdeb")
  say "rootfs: leaving out the kernel modules of ${#MODULE_EXCLUDES[@]} trees and ${#MODULE_EXCLUDES_DEPENDENT[@]} modules that need them"
  say "rootfs: installing $# packages with mmdebstrap (a few minutes)"
  # mmdebstrap finds the Essential packages of a dists/ layout, not of a flat repository.
  mkdir -p "$repo/pool" "$repo/dists/$OS_RELEASE/main/binary-$OS_ARCH"
  for deb in "$@"; do
    ln "$deb" "$repo/pool/" 2>/dev/null || cp "$deb" "$repo/pool/"
  done
  (cd "$repo" && apt-ftparchive -q packages pool > "dists/$OS_RELEASE/main/binary-$OS_ARCH/Packages" 2>/dev/null &&
    apt-ftparchive -q -o APT::FTPArchive::Release::Suite="$OS_RELEASE" -o APT::FTPArchive::Release::Codename="$OS_RELEASE" \
      -o APT::FTPArchive::Release::Architectures="$OS_ARCH" -o APT::FTPArchive::Release::Components=main \
      release "dists/$OS_RELEASE" > Release.new && mv Release.new "dists/$OS_RELEASE/Release")
  os_mmdebstrap "$role" "$out" "deb [trusted=yes] file://$repo $OS_RELEASE main" -- \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount --verbose > "$log" 2>&1
}
