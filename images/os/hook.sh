#!/usr/bin/env bash
# mmdebstrap's hooks for the OS images: `hook.sh essential|customize ROOTDIR` runs
# os_<name>_hook of images/os/rootfs.sh on the chroot being built.
set -euo pipefail
cd "$(dirname "$0")/../.."
. images/common.sh
. images/os/rootfs.sh
"os_$1_hook" "$2"
