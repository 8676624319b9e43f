//! The domain XML of every `VmKind`, checked by libvirt's own RelaxNG schema
//! (`virt-xml-validate <file> domain`) and defined on libvirt's test driver, which parses
//! it with the same code as the real drivers.
//!
//! Xen cannot run on these machines (no Xen hypervisor, and `xen:///system` answers
//! "libxenlight state driver is not active"), so for Xen PV and HVM this schema check and
//! the definition on `test:///default` are all that is tested: no Xen guest boots here.

use std::path::Path;
use std::process::Command;

use cosm_hypervisor::{
    domain_xml, BootSpec, BridgeName, DiskSource, DiskSpec, Hypervisor, LibvirtHypervisor, NicSpec,
    VmKind, VmName, VmPower, VmSpec,
};

fn spec(name: &str, kind: VmKind, dir: &Path) -> VmSpec {
    let mut s = VmSpec::new(VmName::new(name).unwrap(), kind, 2, 512);
    let target = if kind.is_xen() { "xvda" } else { "vda" };
    s.disks.push(DiskSpec {
        source: DiskSource::Blank {
            size_bytes: 1 << 30,
        },
        path: dir.join(format!("{name}.qcow2")),
        target: target.into(),
    });
    s.nics.push(NicSpec::on_bridge(
        BridgeName::new("br0").unwrap(),
        "52:54:00:12:34:56".parse().unwrap(),
    ));
    // A tenant-network NIC: its own tap name and MTU.
    s.nics.push(NicSpec {
        bridge: BridgeName::new("cbr7").unwrap(),
        mac: "52:54:00:12:34:57".parse().unwrap(),
        device: Some("cp525400123457".into()),
        mtu: Some(1450),
    });
    s.console_log = Some(dir.join(format!("{name}.console")));
    if kind == VmKind::XenPv {
        s.boot = Some(BootSpec {
            kernel: "/var/lib/cosm/vmlinuz".into(),
            initrd: Some("/var/lib/cosm/initrd.img".into()),
            cmdline: "console=hvc0 root=/dev/xvda1".into(),
        });
    }
    s.validate().unwrap();
    s
}

/// Runs `virt-xml-validate` on `xml`; fails naming the Debian package if it is missing.
fn validate(xml: &str, dir: &Path, file: &str) -> Result<(), String> {
    let path = dir.join(file);
    std::fs::write(&path, xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .unwrap_or_else(|e| {
            panic!("virt-xml-validate: {e}; install the Debian package libvirt-clients")
        });
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_kind_passes_libvirts_schema() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, file) in [
        (VmKind::Kvm, "kvm.xml"),
        (VmKind::Tcg, "tcg.xml"),
        (VmKind::XenPv, "xen-pv.xml"),
        (VmKind::XenHvm, "xen-hvm.xml"),
    ] {
        let mut s = spec("schema-vm", kind, dir.path());
        if kind == VmKind::Tcg {
            s.boot = Some(BootSpec {
                kernel: "/k".into(),
                initrd: None,
                cmdline: "console=ttyS0 a=\"<&>'\"".into(),
            });
        }
        let xml = domain_xml(&s);
        if let Err(why) = validate(&xml, dir.path(), file) {
            panic!("{kind} XML fails libvirt's schema:\n{why}\n{xml}");
        }
    }
}

/// The schema check can fail: a vCPU count that is not a number is refused.
#[test]
fn the_schema_check_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let xml = domain_xml(&spec("x", VmKind::XenHvm, dir.path()))
        .replace("<vcpu>2</vcpu>", "<vcpu>two</vcpu>");
    assert!(validate(&xml, dir.path(), "broken.xml").is_err());
}

/// Xen PV and HVM domains are defined (and started) on the test driver, and libvirt reads
/// back the Xen-specific parts we wrote. Xen itself cannot run here: see the module docs.
#[test]
fn xen_domains_define_on_the_test_driver() {
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    for (name, kind) in [("xen-pv", VmKind::XenPv), ("xen-hvm", VmKind::XenHvm)] {
        let s = spec(name, kind, dir.path());
        hv.define(&s).unwrap();
        assert_eq!(hv.state(&s.name).unwrap(), VmPower::ShutOff);
        hv.start(&s.name).unwrap();
        assert_eq!(hv.state(&s.name).unwrap(), VmPower::Running);
        hv.destroy(&s.name).unwrap();
        hv.undefine(&s.name).unwrap();
    }
    // What libvirt parsed, seen through virsh on the same kind of connection.
    let pv = dir.path().join("pv.xml");
    std::fs::write(&pv, domain_xml(&spec("xen-pv", VmKind::XenPv, dir.path()))).unwrap();
    let script = format!("define {}; dumpxml xen-pv", pv.display());
    let out = Command::new("virsh")
        .args(["-c", "test:///default", &script])
        .output()
        .unwrap_or_else(|e| panic!("virsh: {e}; install the Debian package libvirt-clients"));
    let dumped = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(dumped.contains("<domain type='xen'>"), "{dumped}");
    // libvirt spells the PV OS type `xen` as its older name `linux` when it writes XML.
    assert!(dumped.contains("machine='xenpv'>linux</type>"), "{dumped}");
    assert!(
        dumped.contains("<target dev='xvda' bus='xen'/>"),
        "{dumped}"
    );
    assert!(
        dumped.contains("<cmdline>console=hvc0 root=/dev/xvda1</cmdline>"),
        "{dumped}"
    );
}
