# shellcheck shell=bash disable=SC2034  # the pins are used by the scripts that source this
# Shared by images/build.sh (the agent ramdisk) and images/guest.sh (the test guest's
# initrd): the pinned Debian packages both are made from, their download into
# images/cache (sha256-checked), and the kernel modules a list of names needs, in load
# order. Sourced, not run; the caller has `set -euo pipefail` and is in the repository root.

KERNEL_PKG=linux-image-6.1.0-56-amd64
KERNEL_VERSION=6.1.192-2
KERNEL_SHA256=a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1
KREL=6.1.0-56-amd64
BUSYBOX_PKG=busybox-static
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
BUSYBOX_SHA256=3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
CACHE=images/cache

# Prints the path of the cached .deb of a pinned package, downloading it first when it is
# missing or does not match its checksum.
fetch() { # package version sha256
  local pkg=$1 ver=$2 sum=$3 deb
  mkdir -p "$CACHE"
  deb=$(ls "$CACHE"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ] || ! echo "$sum  $deb" | sha256sum -c --quiet 2>/dev/null; then
    rm -f "$CACHE"/"${pkg}"_*.deb
    echo "downloading $pkg=$ver" >&2
    (cd "$CACHE" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) || {
      echo "cannot download $pkg=$ver (apt-get update first; the pinned version may have left the mirror: see images/README.md)" >&2; exit 1; }
    deb=$(ls "$CACHE"/"${pkg}"_*.deb | head -n1)
  fi
  echo "$sum  $deb" | sha256sum -c --quiet || { echo "checksum mismatch for $deb" >&2; exit 1; }
  echo "$deb"
}

# Prints the modules.dep paths of the named modules and of everything they depend on,
# each after its dependencies. $1: the unpacked kernel package (depmod already run);
# the rest: module names (`virtio_blk`; `-` and `_` are the same).
modules_in_load_order() { # kernel-root name...
  local root=$1 name path m
  shift
  declare -A deps seen
  local order=()
  while IFS=: read -r m rest; do deps[$m]=$rest; done < "$root/lib/modules/$KREL/modules.dep"
  visit() {
    local mod=$1 d
    [ -n "${seen[$mod]:-}" ] && return
    seen[$mod]=1
    for d in ${deps[$mod]}; do visit "$d"; done
    order+=("$mod")
  }
  for name in "$@"; do
    path=$(printf '%s\n' "${!deps[@]}" | grep -E "/${name//_/[_-]}\.ko$" | head -n1)
    [ -n "$path" ] || { echo "module $name not found in $KERNEL_PKG" >&2; exit 1; }
    visit "$path"
  done
  printf '%s\n' "${order[@]}"
}
