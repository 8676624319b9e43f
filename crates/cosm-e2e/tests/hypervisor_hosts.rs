//! Real guests on the virtual rack's hypervisor hosts: QEMU TCG domains (KVM does not work
//! on our machines) booting the tiny test guest (`images/guest.sh`) through private
//! libvirtds in network namespaces (`cosm_e2e::libvirtd`), driven through
//! `cosm_hypervisor::LibvirtHypervisor`.
//!
//! - a guest prints its marker and counter; a graceful shutdown powers it off through
//!   ACPI, and one that ignores ACPI is forced off after the timeout;
//! - the boot counter on its disk goes up across a reboot;
//! - a running guest live-migrates between two hosts on the rack's bridge and keeps
//!   counting (and pinging the rack's gateway) on the other side without booting again;
//!   its NIC's tap has the name and MTU it was given (as tenant-network ports do) on
//!   both hosts.
//!
//! Needs root, libvirtd (libvirt-daemon-system), QEMU and `make image`'s files; fails,
//! never skips, naming what is missing.

use cosm_e2e::guest::{guest_spec, net_cmdline, wait_console};
use cosm_e2e::libvirtd::PrivateLibvirtd;
use cosm_e2e::netns::NetNs;
use cosm_e2e::rack::Rack;
use cosm_hypervisor::{BridgeName, Hypervisor, NicSpec, ShutdownOutcome, VmName, VmPower};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// From `start` to the marker, with room for a loaded 2-core machine (about 8 s idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A namespace with one address (on `lo`) and a libvirtd on it: one host, no rack.
fn lone_host() -> (PrivateLibvirtd, NetNs) {
    let ns = NetNs::new("lv").unwrap();
    let mut ip = ns.command("ip");
    ip.args(["addr", "add", "198.51.100.1/32", "dev", "lo"]);
    ns.run_ok(ip).unwrap();
    let daemon = PrivateLibvirtd::start(&ns, Ipv4Addr::new(198, 51, 100, 1)).unwrap();
    (daemon, ns)
}

fn marker(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

#[test]
fn a_guest_prints_its_marker_and_counter_and_powers_off() {
    let (daemon, _ns) = lone_host();
    let hv = daemon.connect().unwrap();
    let name = VmName::new("counter").unwrap();
    let mark = marker("console");
    let spec = guest_spec(&daemon.guest_dir(), &name, &mark, None).unwrap();
    hv.define(&spec).unwrap();
    let started = Instant::now();
    hv.start(&name).unwrap();
    assert_eq!(hv.state(&name).unwrap(), VmPower::Running);

    let c = wait_console(&hv, &name, BOOT_TIMEOUT, "the marker", |c| {
        !c.boots.is_empty()
    })
    .unwrap();
    eprintln!("start to marker: {:?}", started.elapsed());
    assert_eq!(c.boots, vec![(mark.clone(), 0)], "no disk: boot=0");
    let c = wait_console(&hv, &name, Duration::from_secs(30), "counter 3", |c| {
        c.last_counter() >= Some(3)
    })
    .unwrap();
    assert_eq!(c.counters[..3], [1, 2, 3]);

    // busybox acpid powers the guest off on the power button.
    let asked = Instant::now();
    let outcome = hv.shutdown(&name, Duration::from_secs(30)).unwrap();
    assert_eq!(outcome, ShutdownOutcome::Graceful);
    eprintln!("graceful shutdown: {:?}", asked.elapsed());
    assert_eq!(hv.state(&name).unwrap(), VmPower::ShutOff);
    let tail = hv.console_tail(&name, 5).unwrap().join("\n");
    assert!(tail.contains("power button: powering off"), "{tail}");

    // With `sleep` as init nothing listens to the power button: forced off at the timeout.
    let mut deaf = spec.clone();
    let boot = deaf.boot.as_mut().unwrap();
    boot.cmdline = format!("console=ttyS0 cosm.marker={mark} rdinit=/bin/sleep -- 100000");
    hv.undefine(&name).unwrap();
    hv.define(&deaf).unwrap();
    hv.start(&name).unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !hv
        .console_tail(&name, 2_000)
        .unwrap()
        .iter()
        .any(|l| l.contains("Run /bin/sleep as init process"))
    {
        assert!(
            Instant::now() < deadline,
            "the deaf guest did not start init"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let asked = Instant::now();
    let outcome = hv.shutdown(&name, Duration::from_secs(3)).unwrap();
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(asked.elapsed() >= Duration::from_secs(3));
    assert_eq!(hv.state(&name).unwrap(), VmPower::ShutOff);
    hv.undefine(&name).unwrap();
    assert!(hv.list().unwrap().iter().all(|d| d.name != "counter"));
}

#[test]
fn the_boot_counter_on_the_disk_goes_up_across_a_reboot() {
    let (daemon, _ns) = lone_host();
    let hv = daemon.connect().unwrap();
    let name = VmName::new("booter").unwrap();
    let mark = marker("reboot");
    let spec = guest_spec(&daemon.guest_dir(), &name, &mark, Some(16 << 20)).unwrap();
    hv.define(&spec).unwrap();
    hv.start(&name).unwrap();
    wait_console(&hv, &name, BOOT_TIMEOUT, "the first boot", |c| {
        c.boots.len() == 1 && c.last_counter() >= Some(1)
    })
    .unwrap();

    // libvirt's reboot presses the power button and starts the guest again when it
    // powers off; the console log is appended to, so it holds both boots.
    let asked = Instant::now();
    hv.reboot(&name).unwrap();
    let c = wait_console(&hv, &name, BOOT_TIMEOUT, "the second boot", |c| {
        c.boots.len() == 2
    })
    .unwrap();
    eprintln!("reboot to marker: {:?}", asked.elapsed());
    assert_eq!(c.boots, vec![(mark.clone(), 1), (mark.clone(), 2)]);

    // And once more through a shutdown and a start.
    assert_eq!(
        hv.shutdown(&name, Duration::from_secs(30)).unwrap(),
        ShutdownOutcome::Graceful
    );
    hv.start(&name).unwrap();
    let c = wait_console(&hv, &name, BOOT_TIMEOUT, "the third boot", |c| {
        c.boots.len() == 3
    })
    .unwrap();
    assert_eq!(c.boots[2], (mark, 3));
}

#[test]
fn a_running_guest_live_migrates_between_two_hosts_and_keeps_counting() {
    let mut rack = Rack::start("mig", "").unwrap();
    let a = rack.add_host(1).unwrap();
    let b = rack.add_host(2).unwrap();
    let (host_a, host_b) = (&rack.hosts[a], &rack.hosts[b]);
    assert_ne!(host_a.libvirtd.host_uuid(), host_b.libvirtd.host_uuid());
    let hv_a = host_a.libvirtd.connect().unwrap();
    let hv_b = host_b.libvirtd.connect().unwrap();

    // The disk and console live where both hosts see them at the same path (shared
    // storage, as migration without copying disks needs).
    let name = VmName::new("mover").unwrap();
    let mark = marker("migrate");
    let mut spec = guest_spec(&host_a.libvirtd.guest_dir(), &name, &mark, Some(16 << 20)).unwrap();
    // A NIC on the hosts' br0 whose tap has a name and MTU of our choosing, as a
    // tenant-network port's does (`cosm_wire::port_device`); the guest pings the rack.
    let mac: cosm_wire::MacAddr = "52:54:00:0c:0c:01".parse().unwrap();
    let tap = cosm_wire::port_device(&mac);
    spec.nics.push(NicSpec {
        bridge: BridgeName::new("br0").unwrap(),
        mac,
        device: Some(tap.clone()),
        mtu: Some(1450),
    });
    let boot = spec.boot.as_mut().unwrap();
    boot.cmdline += &format!(
        " {}",
        net_cmdline("192.0.2.250", 24, None, Some("192.0.2.1"))
    );
    hv_a.define(&spec).unwrap();
    hv_a.start(&name).unwrap();
    let before = wait_console(&hv_a, &name, BOOT_TIMEOUT, "counter 3 on A", |c| {
        c.boots.len() == 1 && c.last_counter() >= Some(3)
    })
    .unwrap();
    let tap_on = |host: &cosm_e2e::rack::Host| {
        let mut ip = host.ns.command("ip");
        ip.args(["-o", "link", "show", "dev", &tap]);
        host.ns.run_ok(ip).ok()
    };
    let link = tap_on(host_a).expect("the tap is on A");
    assert!(
        link.contains("mtu 1450") && link.contains("master br0"),
        "{link}"
    );
    assert_eq!(before.nets.len(), 1, "{before:?}");
    assert_eq!(before.nets[0].mtu, Some(1450), "virtio told the guest");
    let before = wait_console(&hv_a, &name, BOOT_TIMEOUT, "a ping on A", |c| {
        c.last_ping().is_some_and(|p| p.ok)
    })
    .unwrap();
    let pinged = before.last_ping().unwrap().seq;
    assert_eq!(before.boots, vec![(mark.clone(), 1)]);
    let at_migration = before.last_counter().unwrap();

    let asked = Instant::now();
    hv_a.migrate(&name, &host_b.tcp_uri(), true)
        .unwrap_or_else(|e| panic!("migrate to {}: {e:#?}", host_b.tcp_uri()));
    eprintln!("live migration A → B: {:?}", asked.elapsed());

    // Gone from A (undefined there), running and persistent on B.
    assert!(
        hv_a.list().unwrap().iter().all(|d| d.name != "mover"),
        "still on A: {:?}",
        hv_a.list().unwrap()
    );
    assert_eq!(hv_b.state(&name).unwrap(), VmPower::Running);
    let after = wait_console(
        &hv_b,
        &name,
        Duration::from_secs(60),
        "counting on B",
        |c| c.last_counter() >= Some(at_migration + 3),
    )
    .unwrap();
    // No reboot: one marker, and the counter never went back.
    assert_eq!(after.boots, vec![(mark, 1)], "the guest booted again on B");
    assert!(
        after.counters.windows(2).all(|w| w[1] > w[0]),
        "the counter went back: {:?}",
        after.counters
    );
    assert_eq!(after.counters[0], 1);
    // The tap kept its name and MTU on B (libvirt keeps a name that is not its own
    // `vnet…`), and the guest still reaches the rack.
    let link = tap_on(host_b).expect("the tap is on B");
    assert!(
        link.contains("mtu 1450") && link.contains("master br0"),
        "{link}"
    );
    assert_eq!(tap_on(host_a), None, "the tap is gone from A");
    wait_console(&hv_b, &name, Duration::from_secs(60), "a ping on B", |c| {
        c.pings.iter().any(|p| p.seq > pinged + 2 && p.ok)
    })
    .unwrap();

    // Persistent on B: it survives being shut down there.
    hv_b.destroy(&name).unwrap();
    assert_eq!(hv_b.state(&name).unwrap(), VmPower::ShutOff);
    hv_b.undefine(&name).unwrap();
}

/// Hosts with their agents register and become active `host` machines, as `make demo
/// DEMO_HOSTS=N` brings them up.
#[test]
fn rack_hosts_register_and_become_active_vm_hosts() {
    let mut rack = Rack::start("hosts", "").unwrap();
    rack.start_hosts(2, Duration::from_secs(60)).unwrap();
    for h in &rack.hosts {
        let m = rack
            .app
            .api(&format!("/api/v1/machines/{}", h.mac))
            .unwrap();
        assert_eq!(m["role"], "host", "{m}");
        assert_eq!(m["state"], "active", "{m}");
        assert!(h.tcp_uri().starts_with("qemu+tcp://192.0.2."));
    }
}
