//! The boot path end to end: in a virtual rack (tests/src/rack.rs), real firmware powers
//! on with an empty disk and ends up running the COSM agent from the ramdisk, once per
//! firmware path real servers use:
//! 1. SeaBIOS with the NIC's iPXE option ROM;
//! 2. OVMF with the NIC's iPXE option ROM;
//! 3. OVMF's own PXE, which TFTP-loads snponly.efi, which fetches its script over HTTP;
//! 4. OVMF's UEFI HTTP Boot, which loads snponly.efi over HTTP.
//!
//! Each test asserts "agent registered" on the appliance's timeline and "enrolled as" on
//! the machine's serial console, and that the timeline shows the steps of that path in
//! order (DHCP, TFTP or HTTP for iPXE, script, kernel, initrd, agent), and, on the iPXE ROM
//! paths, that the appliance sent IPv6 router advertisements on the segment.

use cosm_e2e::netns::require_root_tools;
use cosm_e2e::rack::{Firmware, Rack};
use std::time::Duration;

/// Under TCG a UEFI machine takes about a minute to register here; the bound only keeps a
/// broken boot from hanging the suite.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn position(events: &[(String, String)], what: &str, pred: impl Fn(&str, &str) -> bool) -> usize {
    events
        .iter()
        .position(|(k, m)| pred(k, m))
        .unwrap_or_else(|| panic!("the timeline has no {what}:\n{events:#?}"))
}

fn boots_to_agent(firmware: Firmware, n: u8) {
    require_root_tools(&["ip", "qemu-system-x86_64", "curl"]);
    let mut rack = Rack::start(&format!("rk{n}"), "").unwrap();
    let vm = rack.power_on(n, firmware).unwrap();
    if let Err(e) = rack.wait_registered(vm, BOOT_TIMEOUT, |_, _| {}) {
        panic!("{e:#}\nappliance log:\n{}", rack.app.log_text());
    }
    let mac = rack.vms[vm].mac.clone();
    let events = rack.timeline(&mac);
    let step = |what: &str, kind: &str, text: &str| {
        position(&events, what, |k, m| k == kind && m.contains(text))
    };
    // The machine was recorded at its first DISCOVER, so the whole boot is on its timeline.
    let discover = step("first DISCOVER", "dhcp", "DISCOVER");
    let ack = step("ACK", "dhcp", "ACK");
    let script = step("iPXE script", "boot", "iPXE script");
    let kernel = step("kernel fetch", "boot", "kernel vmlinuz fetched");
    let initrd = step("initrd fetch", "boot", "initrd initramfs.img fetched");
    let agent = step("agent registration", "agent_registered", "");
    assert!(
        discover < ack && ack < script && script < kernel && kernel < initrd && initrd < agent,
        "steps out of order: {events:#?}"
    );
    // The iPXE option ROMs (QEMU's, Debian's ipxe-qemu) configure IPv6 beside DHCP and ask
    // for their script only once both are done; on this segment the appliance sends router
    // advertisements, which end that wait (the time saved is `pxe-bench`'s figure). The
    // ROM's configuration ends on the first advertisement it sees: the answer to its
    // solicitation, or a periodic one that came first (a capture here showed both), so the
    // answer is on the machine's timeline only in the first case, and then before the
    // script.
    if matches!(firmware, Firmware::BiosIpxeRom | Firmware::UefiIpxeRom) {
        let metrics = rack.app.metrics().unwrap();
        let value = |series: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(value("cosm_ra_advertising"), 1, "{metrics}");
        assert!(
            value("cosm_ra_sent_packets_total{kind=\"periodic\"}") >= 1,
            "{metrics}"
        );
        if let Some(ra) = events
            .iter()
            .position(|(k, m)| k == "dhcp" && m.contains("router advertisement sent in answer"))
        {
            assert!(ra < script, "{events:#?}");
        }
    }
    match firmware {
        Firmware::UefiPxe => {
            let tftp = step("TFTP of snponly.efi", "tftp", "TFTP snponly.efi requested");
            assert!(ack < tftp && tftp < script, "{events:#?}");
            step("PXE DISCOVER", "dhcp", "(PXE uefi)");
        }
        Firmware::UefiHttp => {
            let http = step(
                "HTTP fetch of snponly.efi",
                "boot",
                "file snponly.efi fetched over HTTP",
            );
            assert!(ack < http && http < script, "{events:#?}");
            step("HTTP Boot DISCOVER", "dhcp", "(HTTP Boot uefi)");
            assert!(
                !events.iter().any(|(k, _)| k == "tftp"),
                "HTTP Boot used TFTP: {events:#?}"
            );
        }
        Firmware::BiosIpxeRom | Firmware::UefiIpxeRom => {
            step("iPXE DISCOVER", "dhcp", "(iPXE");
            assert!(
                !events.iter().any(|(k, _)| k == "tftp"),
                "an iPXE ROM needs no TFTP: {events:#?}"
            );
        }
    }
    // The agent's inventory is the VM's.
    let m = rack.app.api(&format!("/api/v1/machines/{mac}")).unwrap();
    assert_eq!(m["state"], "discovered", "{m}");
    assert_eq!(m["inventory"]["cpu"]["threads"], rack.vms[vm].cpus, "{m}");
    let uefi_seen = m["inventory"]["firmware"].to_string();
    assert!(
        uefi_seen.contains(if firmware == Firmware::BiosIpxeRom {
            "bios"
        } else {
            "uefi"
        }),
        "inventory firmware {uefi_seen} for {}",
        firmware.label()
    );
}

#[test]
fn bios_with_ipxe_rom_boots_the_agent() {
    boots_to_agent(Firmware::BiosIpxeRom, 1);
}

#[test]
fn uefi_with_ipxe_rom_boots_the_agent() {
    boots_to_agent(Firmware::UefiIpxeRom, 2);
}

#[test]
fn uefi_native_pxe_chains_ipxe_efi_over_tftp_and_boots_the_agent() {
    boots_to_agent(Firmware::UefiPxe, 3);
}

#[test]
fn uefi_http_boot_loads_ipxe_over_http_and_boots_the_agent() {
    boots_to_agent(Firmware::UefiHttp, 4);
}
