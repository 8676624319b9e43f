//! One body of behaviour (`contract`) run against the real libvirt driver
//! (`test:///default`, libvirt's own in-process test hypervisor: no daemon, real XML
//! parsing, real state machine) and against `SimHypervisor`, so the simulation cannot
//! drift from the driver it stands in for. Then what only one of them can show.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cosm_hypervisor::{
    BridgeName, DiskSource, DiskSpec, Hypervisor, HypervisorError, LibvirtHypervisor, NicSpec,
    ShutdownOutcome, SimCluster, SimHypervisor, SnapshotName, VmKind, VmName, VmPower, VmSpec,
};

fn name(s: &str) -> VmName {
    VmName::new(s).unwrap()
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::new(s).unwrap()
}

/// Fails (never skips) when a tool is missing, naming the Debian package.
fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (make deps does)"
    );
}

fn spec(vm: &str, dir: &Path) -> VmSpec {
    let mut s = VmSpec::new(name(vm), VmKind::Tcg, 1, 128);
    s.disks.push(DiskSpec {
        source: DiskSource::Blank {
            size_bytes: 64 << 20,
        },
        path: dir.join(format!("{vm}-root.qcow2")),
        target: "vda".into(),
    });
    // A tenant-network NIC (its own tap name and MTU): both take it.
    let mac: cosm_wire::MacAddr = "52:54:00:0c:0c:01".parse().unwrap();
    s.nics.push(NicSpec {
        bridge: BridgeName::new("cbr7").unwrap(),
        mac,
        device: Some(cosm_wire::port_device(&mac)),
        mtu: Some(1450),
    });
    s.console_log = Some(dir.join(format!("{vm}.console")));
    s
}

fn listed(hv: &dyn Hypervisor, vm: &str) -> Option<VmPower> {
    let list = hv.list().unwrap();
    let mut sorted = list.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(list, sorted, "list is sorted by name");
    list.into_iter().find(|d| d.name == vm).map(|d| d.power)
}

#[track_caller]
fn assert_wrong_state(
    r: Result<impl std::fmt::Debug, HypervisorError>,
    want_op: &str,
    want: VmPower,
) {
    match r {
        Err(HypervisorError::WrongState { op, power, .. }) => {
            assert_eq!((op, power), (want_op, want))
        }
        other => panic!("expected WrongState({want_op}, {want}), got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found(r: Result<impl std::fmt::Debug, HypervisorError>) {
    match r {
        Err(HypervisorError::NotFound { name }) => assert_eq!(name, "ghost"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// The behaviour both drivers must share.
fn contract(hv: &dyn Hypervisor, dir: &Path) {
    let vm = name("c1");
    assert_eq!(listed(hv, "c1"), None);

    // The host's size: some CPUs and memory.
    let size = hv.host_info().unwrap();
    assert!(size.vcpus >= 1 && size.memory_mib >= 1, "{size:?}");

    // Define: refused when invalid or taken.
    let mut bad = spec("c1", dir);
    bad.vcpus = 0;
    assert!(matches!(hv.define(&bad), Err(HypervisorError::Spec(_))));
    assert_eq!(listed(hv, "c1"), None, "an invalid spec defines nothing");
    hv.define(&spec("c1", dir)).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), VmPower::ShutOff);
    match hv.define(&spec("c1", dir)) {
        Err(HypervisorError::AlreadyExists { name }) => assert_eq!(name, "c1"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    // Power.
    assert_wrong_state(hv.destroy(&vm), "destroy", VmPower::ShutOff);
    hv.start(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), VmPower::Running);
    assert_eq!(listed(hv, "c1"), Some(VmPower::Running));
    assert_wrong_state(hv.start(&vm), "start", VmPower::Running);
    hv.reboot(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), VmPower::Running);
    assert_wrong_state(hv.undefine(&vm), "undefine", VmPower::Running);

    // Snapshots, taken running; reverting brings back the running state.
    hv.snapshot_create(&vm, &snap("s1")).unwrap();
    assert!(matches!(
        hv.snapshot_create(&vm, &snap("s1")),
        Err(HypervisorError::SnapshotExists { .. })
    ));
    hv.snapshot_create(&vm, &snap("s2")).unwrap();
    assert_eq!(hv.snapshot_list(&vm).unwrap(), [snap("s1"), snap("s2")]);
    hv.destroy(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), VmPower::ShutOff);
    hv.snapshot_revert(&vm, &snap("s1")).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), VmPower::Running);
    hv.snapshot_delete(&vm, &snap("s2")).unwrap();
    assert_eq!(hv.snapshot_list(&vm).unwrap(), [snap("s1")]);
    for r in [
        hv.snapshot_delete(&vm, &snap("s2")),
        hv.snapshot_revert(&vm, &snap("nope")),
    ] {
        match r {
            Err(HypervisorError::SnapshotNotFound { name, snapshot }) => {
                assert_eq!(name, "c1");
                assert!(snapshot == "s2" || snapshot == "nope");
            }
            other => panic!("expected SnapshotNotFound, got {other:?}"),
        }
    }

    // Console: bounded by what is asked.
    assert!(hv.console_tail(&vm, 0).unwrap().is_empty());
    assert!(hv.console_tail(&vm, 3).unwrap().len() <= 3);

    // Graceful shutdown, then nothing left to shut down.
    let started = Instant::now();
    assert_eq!(
        hv.shutdown(&vm, Duration::from_secs(10)).unwrap(),
        ShutdownOutcome::Graceful
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(hv.state(&vm).unwrap(), VmPower::ShutOff);
    assert_wrong_state(
        hv.shutdown(&vm, Duration::from_secs(1)),
        "shut down",
        VmPower::ShutOff,
    );
    assert_wrong_state(hv.reboot(&vm), "reboot", VmPower::ShutOff);

    // Undefine with a snapshot left: its metadata goes too.
    hv.undefine(&vm).unwrap();
    assert_eq!(listed(hv, "c1"), None);
    assert!(matches!(
        hv.state(&vm),
        Err(HypervisorError::NotFound { .. })
    ));

    // A VM without a console log.
    let mut quiet = spec("quiet", dir);
    quiet.console_log = None;
    quiet.disks.clear();
    hv.define(&quiet).unwrap();
    assert!(matches!(
        hv.console_tail(&name("quiet"), 5),
        Err(HypervisorError::NoConsole { .. })
    ));
    hv.undefine(&name("quiet")).unwrap();

    // Every operation on a VM that does not exist says so.
    let ghost = name("ghost");
    let s = snap("s1");
    assert_not_found(hv.start(&ghost));
    assert_not_found(hv.shutdown(&ghost, Duration::from_secs(1)));
    assert_not_found(hv.destroy(&ghost));
    assert_not_found(hv.reboot(&ghost));
    assert_not_found(hv.undefine(&ghost));
    assert_not_found(hv.state(&ghost));
    assert_not_found(hv.snapshot_create(&ghost, &s));
    assert_not_found(hv.snapshot_list(&ghost));
    assert_not_found(hv.snapshot_revert(&ghost, &s));
    assert_not_found(hv.snapshot_delete(&ghost, &s));
    assert_not_found(hv.migrate(&ghost, "test:///default", true));
    assert_not_found(hv.console_tail(&ghost, 5));
}

#[test]
fn libvirt_test_driver_keeps_the_contract() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    contract(&hv, dir.path());
}

#[test]
fn simulation_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SimHypervisor::new("sim://host1"), dir.path());
}

#[test]
fn libvirt_define_makes_blank_and_overlay_disks_with_qemu_img() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let base_before = std::fs::read(&base).unwrap();

    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    let mut s = spec("disky", dir.path());
    s.disks.push(DiskSpec {
        source: DiskSource::Overlay { base: base.clone() },
        path: dir.path().join("disky-data.qcow2"),
        target: "vdb".into(),
    });
    hv.define(&s).unwrap();

    let info = |path: &Path| {
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let root = info(&s.disks[0].path);
    assert!(root.contains("\"virtual-size\": 67108864"), "{root}");
    assert!(root.contains("\"format\": \"qcow2\""), "{root}");
    let overlay = info(&s.disks[1].path);
    assert!(
        overlay.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
        "{overlay}"
    );
    assert!(overlay.contains("\"virtual-size\": 33554432"), "{overlay}");
    assert_eq!(std::fs::read(&base).unwrap(), base_before, "base untouched");

    // A disk qemu-img cannot make fails the define and leaves no domain and no files.
    let mut broken = spec("broken", dir.path());
    broken.disks.push(DiskSpec {
        source: DiskSource::Overlay {
            base: dir.path().join("no-such-base.qcow2"),
        },
        path: dir.path().join("broken-data.qcow2"),
        target: "vdb".into(),
    });
    match hv.define(&broken) {
        Err(e @ HypervisorError::Disk { .. }) => {
            assert!(e.to_string().contains("no-such-base"), "{e}")
        }
        other => panic!("expected a Disk error, got {other:?}"),
    }
    assert!(!broken.disks[0].path.exists(), "the first disk was removed");
    assert!(matches!(
        hv.state(&name("broken")),
        Err(HypervisorError::NotFound { .. })
    ));
}

#[test]
fn libvirt_console_tail_reads_the_log_libvirt_knows() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    let s = spec("talker", dir.path());
    hv.define(&s).unwrap();
    assert!(hv.console_tail(&name("talker"), 5).unwrap().is_empty());
    let log: String = (1..=50).map(|i| format!("boot line {i}\r\n")).collect();
    std::fs::write(s.console_log.as_ref().unwrap(), log).unwrap();
    assert_eq!(
        hv.console_tail(&name("talker"), 2).unwrap(),
        ["boot line 49", "boot line 50"]
    );
}

/// The test driver cannot migrate: the error carries libvirt's own message. (A real
/// migration between two libvirtd needs the daemons of the facts' migration section.)
#[test]
fn libvirt_errors_carry_libvirts_message() {
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    let mut s = spec("mover", dir.path());
    s.disks.clear();
    hv.define(&s).unwrap();
    let err = hv
        .migrate(&name("mover"), "test:///default", false)
        .unwrap_err();
    let source = std::error::Error::source(&err).map(|e| e.to_string());
    assert!(
        matches!(err, HypervisorError::Libvirt { op: "migrate", .. }),
        "{err:?}"
    );
    assert!(
        source.as_deref().is_some_and(|m| !m.is_empty()),
        "libvirt's message is the source: {err:?}"
    );

    match LibvirtHypervisor::connect("nosuchdriver:///system") {
        Err(e @ HypervisorError::Connect { .. }) => {
            assert!(e.to_string().contains("nosuchdriver:///system"), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected a Connect error, got {other:?}"),
    }
}

#[test]
fn simulated_guest_that_ignores_acpi_is_forced_off() {
    let hv = SimHypervisor::new("sim://h");
    let dir = tempfile::tempdir().unwrap();
    hv.define(&spec("stubborn", dir.path())).unwrap();
    hv.start(&name("stubborn")).unwrap();
    hv.set_ignores_acpi(&name("stubborn"), true).unwrap();
    assert_eq!(
        hv.shutdown(&name("stubborn"), Duration::from_secs(1))
            .unwrap(),
        ShutdownOutcome::Forced
    );
    assert_eq!(hv.state(&name("stubborn")).unwrap(), VmPower::ShutOff);
    let console = hv.console_tail(&name("stubborn"), 10).unwrap();
    assert_eq!(console.last().unwrap(), "[sim] stubborn: ACPI power button");
}

#[test]
fn simulated_migration_moves_the_vm_between_hosts() {
    let cluster = SimCluster::new();
    let (a, b) = (cluster.host("sim://a"), cluster.host("sim://b"));
    let dir = tempfile::tempdir().unwrap();
    let vm = name("roamer");
    a.define(&spec("roamer", dir.path())).unwrap();
    a.start(&vm).unwrap();
    a.snapshot_create(&vm, &snap("s")).unwrap();
    assert!(matches!(
        a.migrate(&vm, "sim://b", true),
        Err(HypervisorError::MigrationRefused { .. })
    ));
    a.snapshot_delete(&vm, &snap("s")).unwrap();
    assert!(matches!(
        a.migrate(&vm, "sim://nowhere", true),
        Err(HypervisorError::UnknownSimHost { .. })
    ));
    a.migrate(&vm, "sim://b", true).unwrap();
    assert!(matches!(
        a.state(&vm),
        Err(HypervisorError::NotFound { .. })
    ));
    assert_eq!(b.state(&vm).unwrap(), VmPower::Running);
    b.define(&spec("other", dir.path())).unwrap();
    a.define(&spec("other", dir.path())).unwrap();
    assert!(matches!(
        a.migrate(&name("other"), "sim://b", false),
        Err(HypervisorError::AlreadyExists { .. })
    ));
}

/// Scale: the simulation holds a thousand VMs on a hundred hosts in one process.
#[test]
fn simulation_holds_many_hosts_and_vms() {
    let cluster = SimCluster::new();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for h in 0..100 {
        let host = cluster.host(&format!("sim://h{h}"));
        for v in 0..10 {
            let vm = format!("h{h}-vm{v}");
            host.define(&spec(&vm, dir.path())).unwrap();
            host.start(&name(&vm)).unwrap();
        }
    }
    let running: usize = (0..100)
        .map(|h| cluster.host(&format!("sim://h{h}")).list().unwrap().len())
        .sum();
    assert_eq!(running, 1000);
    assert!(started.elapsed() < Duration::from_secs(10));
}
