# COSM — top-level commands. `make demo` and `make test` work on a fresh Debian 12 (root).
SHELL := /bin/bash
CARGO ?= cargo
# Where cargo puts its builds (CARGO_TARGET_DIR when set).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Debian packages the tests and the demo need (checked one by one; only missing ones are installed).
# iputils-ping, isc-dhcp-client, procps (sysctl): the network-namespace tests (crates/cosm-e2e/src/netns.rs);
# kea-admin (perfdhcp), kea-dhcp4-server, dnsmasq-base: the DHCP benchmark (scripts/bench-dhcp.sh).
# ipxe (undionly.kpxe, ipxe.efi, snponly.efi), ipxe-qemu (NIC option ROMs), ovmf (UEFI firmware),
# atftp (TFTP client): the boot path and the virtual rack (crates/cosm-e2e/tests/boot_rack.rs, tftp.rs, make demo).
# libvirt-dev, pkg-config: building cosm-hypervisor (the `virt` crate links libvirt). libvirt-clients
# (virt-xml-validate, virsh) and qemu-utils (qemu-img makes VM disks):
# crates/cosm-hypervisor/tests/domain_xml_schema.rs and hypervisor_contract.rs. libvirt-daemon-system
# (libvirtd, started privately in network namespaces by the tests and the rack's hypervisor hosts, never
# as a service): crates/cosm-e2e/tests/hypervisor_hosts.rs, make demo DEMO_HOSTS=N. ipmitool (the IPMI power
# driver, crates/cosm-power/src/ipmi.rs); python3-dev, gcc (pip builds libvirt-python from source):
# crates/cosm-e2e/tests/power.rs. nftables (nft): the appliance cut off from its hosts in
# crates/cosm-e2e/tests/ha.rs and the tenant-network rules (crates/cosm-sdn/tests/linux.rs, which also
# needs netcat-openbsd for its TCP checks). tcpdump: ARP seen or not across tenant networks
# (crates/cosm-e2e/tests/sdn.rs). fdisk (sfdisk), gdisk (sgdisk), e2fsprogs (mkfs.ext4, debugfs, e2fsck): the
# image installer's GPT and loop-device tests (crates/cosm-agent/tests/install_gpt.rs, install_disk.rs).
# ndisc6 (rdisc6, a router-discovery client that solicits and decodes router advertisements):
# crates/cosm-e2e/tests/router_advertisements.rs. mmdebstrap, apt-utils (apt-ftparchive: a local
# repository of the pinned .debs), dosfstools (mkfs.fat, fsck.fat), mtools (mcopy; the syslinux
# installer runs it), syslinux, syslinux-common and systemd-boot-efi (the boot loaders; the image
# takes the lock's pinned copies of them), zstd: the OS images (images/os-image.sh, make os-image)
# and their tests (crates/cosm-e2e/tests/os_image.rs, image_install.rs).
APT_PACKAGES := curl iproute2 python3 python3-venv python3-pip jq procps iputils-ping isc-dhcp-client kea-admin kea-dhcp4-server dnsmasq-base qemu-system-x86 ipxe-qemu ipxe ovmf atftp util-linux isc-dhcp-relay kmod cpio binutils bc shellcheck libvirt-dev pkg-config libvirt-clients qemu-utils libvirt-daemon-system ipmitool python3-dev gcc nftables netcat-openbsd tcpdump chromium chromium-driver fdisk gdisk e2fsprogs ndisc6 mmdebstrap apt-utils dosfstools mtools syslinux syslinux-common systemd-boot-efi zstd
# Whether a Debian package is installed. Not `dpkg -s`: it succeeds for a package dpkg only
# knows of ("unknown ok not-installed", as qemu-utils is on a fresh Debian 12 cloud image).
PKG_INSTALLED := pkg_installed() { [ "$$(dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null)" = "install ok installed" ]; }; pkg_installed
# Only `make bench` needs these: TFTP peers (atftpd is unpacked from its .deb by the script,
# because it conflicts with tftpd-hpa as a package).
BENCH_PACKAGES := tftpd-hpa iperf3
# Python tools, installed into ./.venv: openapi-spec-validator (crates/cosm-e2e/tests/openapi.rs), pykickstart
# (ksvalidator, crates/cosm-kickstart/tests/templates.rs); the BMC emulators sushy-tools (Redfish) and
# virtualbmc (IPMI) with libvirt-python (their libvirt binding) and bcrypt (the test's htpasswd file):
# crates/cosm-e2e/tests/power.rs. shellcheck (apt) checks the kickstart scripts. An existing .venv gets
# whichever of these it lacks.
PIP_PACKAGES := openapi-spec-validator pykickstart sushy-tools virtualbmc libvirt-python bcrypt

.PHONY: all build test check demo bench deps clean help toolchain fuzz image os-image os-images os-image-lock

help:
	@echo "make demo   - build, then a virtual rack: three QEMU machines (BIOS, UEFI PXE, UEFI HTTP Boot) network-boot, get roles, are deployed; DEMO_HOSTS=N adds N hypervisor hosts (libvirtd + agent)"
	@echo "make test   - the whole test suite (installs what it needs first)"
	@echo "make check  - cargo fmt --check and clippy -D warnings"
	@echo "make bench  - DHCP (vs Kea, dnsmasq), TFTP (vs tftpd-hpa, atftpd, dnsmasq), HTTP boot, agent heartbeats, heartbeats under list load, VMs, host HA, PXE power-on → ramdisk (vs dnsmasq), image installs power-on → active per firmware (root)"
	@echo "make deps   - install the system packages and Python tools the tests need"
	@echo "make fuzz   - fuzz DHCP packets, TFTP requests, router solicitations and HTTP requests through the API router, FUZZ_SECONDS each (default 60)"
	@echo "make image  - build the agent ramdisk (images/out): prints sizes and sha256"
	@echo "make os-image ROLE=base|host|storage|web|center - a role's Debian 12 disk image with the agent (images/out/os: .img.zst and manifest); make os-image-lock ROLE=... pins its packages again"
	@echo "make os-images - the base and host images (what make test, make demo and make bench install)"

all: build

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo is not installed: install Rust (https://rustup.rs) and rerun"; exit 1; }

deps:
	@missing=""; for p in $(APT_PACKAGES); do $(PKG_INSTALLED) $$p || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing"; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@[ -x $(VENV)/bin/python3 ] || { echo "creating $(VENV)"; python3 -m venv $(VENV); }
	@$(VENV)/bin/python3 -c 'import sys, importlib.metadata as m; [m.version(p) for p in sys.argv[1:]]' $(PIP_PACKAGES) 2>/dev/null || { \
	  echo "installing into $(VENV): $(PIP_PACKAGES) (those already there are kept)"; \
	  $(VENV)/bin/pip install -q $(PIP_PACKAGES); }

build: toolchain deps
	$(CARGO) build --workspace --bins

# The OS image tests (crates/cosm-e2e/tests/os_image.rs, image_install.rs) boot the base and host
# images: they are built first (their root file systems are cached, so a rebuild takes about a
# minute each).
test: toolchain deps build image os-images
	$(CARGO) test --workspace --no-fail-fast

# The agent ramdisk (images/out/vmlinuz + initramfs.img) and the test guest's initrd
# (images/out/guest-initrd.img, booted with the same kernel), from pinned Debian packages.
# The ramdisk's agent is built without the `libvirt` feature, so the ramdisk needs no
# libvirt library (build.sh refuses an agent that links one). Installed hypervisor hosts get
# images/out/cosm-agent-libvirt instead: the same agent with its libvirt VM controller. It
# is built first, so target/release/cosm-agent ends as the ramdisk's (the ramdisk test
# rebuilds the image from it).
image: toolchain deps
	$(CARGO) build --release -p cosm-agent
	mkdir -p images/out
	strip -o images/out/cosm-agent-libvirt $(TARGET_DIR)/release/cosm-agent
	$(CARGO) build --release -p cosm-agent --no-default-features
	AGENT_BIN=$(TARGET_DIR)/release/cosm-agent ./images/build.sh
	./images/guest.sh

# A role's OS image (images/os-image.sh): minimized Debian 12 with the agent, a GPT disk image
# (images/out/os/cosm-$(ROLE)-bookworm.img.zst) and its manifest. Its packages are pinned by
# images/os/$(ROLE).lock; os-image-lock resolves them again against Debian's mirror.
ROLE ?= base
os-image: toolchain deps image
	./images/os-image.sh $(ROLE)

# The role images the tests and the demo install: base and host.
os-images: toolchain deps image
	./images/os-image.sh base
	./images/os-image.sh host

os-image-lock: deps
	./images/os-image.sh --update-lock $(ROLE)

check: toolchain deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: toolchain deps build image os-images
	./scripts/demo.sh

# vm-bench is not pinned to a CPU: its rack's QEMU guests need both cores. Nor is ha-bench: its
# rack's agents and a thousand simulated hosts share both cores with the appliance. Nor is
# pxe-bench: its QEMU machine (TCG, two vCPUs) and the server it boots from share both cores.
bench: toolchain deps image os-images
	@for p in $(BENCH_PACKAGES); do $(PKG_INSTALLED) $$p || DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$p; done
	$(CARGO) build --release --bins
	./scripts/bench-dhcp.sh
	./scripts/bench-tftp.sh
	taskset -c 1 $(TARGET_DIR)/release/heartbeat-bench
	taskset -c 1 $(TARGET_DIR)/release/list-bench
	$(TARGET_DIR)/release/vm-bench
	$(TARGET_DIR)/release/ha-bench
	$(TARGET_DIR)/release/sdn-bench
	$(TARGET_DIR)/release/pxe-bench
	$(TARGET_DIR)/release/install-bench

# Fuzz the DHCP packet path, the TFTP request parser, the router-solicitation check
# (crates/cosm-netboot/fuzz) and the HTTP API through its router (crates/cosm-appliance/fuzz)
# for FUZZ_SECONDS each (default 60). cargo-fuzz
# needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
FUZZ_SECONDS ?= 60
# Each target (fuzz directory:target) runs for FUZZ_SECONDS, one after the other.
FUZZ_TARGETS := cosm-netboot:dhcp_packet cosm-netboot:tftp_request cosm-netboot:ra_solicitation cosm-appliance:http_request
fuzz: toolchain
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  (cd crates/$${t%%:*}/fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $${t#*:} -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048) || exit 1; done

clean:
	$(CARGO) clean
	rm -rf $(VENV)
