#!/usr/bin/env bash
# `make demo`: a virtual rack. The appliance on a private provisioning network (a network
# namespace with a bridge) and three QEMU machines with empty disks that boot from the
# network with real firmware — SeaBIOS + iPXE ROM, OVMF's own PXE (TFTP → snponly.efi), OVMF's
# UEFI HTTP Boot — into the COSM agent ramdisk, are deployed from role images (make os-images)
# and boot their installed Debian to `active`. Progress is printed live; a table of the
# rack ends it. DEMO_KEEP=1 leaves everything running. The work is in crates/cosm-e2e/src/bin/vrack.rs
# (the same harness the end-to-end tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, a bridge and taps for the VMs)"; exit 1; }
exec "${CARGO_TARGET_DIR:-./target}/debug/vrack" "$@"
