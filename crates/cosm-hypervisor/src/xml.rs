//! libvirt domain and snapshot XML from a checked `VmSpec`, written with quick-xml's writer
//! (which escapes every text and attribute value), and the few reads of libvirt's XML the
//! driver needs. Pure: no I/O, no libvirt.

use std::path::PathBuf;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::spec::{target_bus, DiskSpec, NicSpec, SnapshotName, VmKind, VmSpec};

/// A small façade over quick-xml's writer; writing into a `Vec` cannot fail.
struct Xml(Writer<Vec<u8>>);

const IN_MEMORY: &str = "writing XML into memory cannot fail";

impl Xml {
    fn new() -> Xml {
        Xml(Writer::new_with_indent(Vec::new(), b' ', 2))
    }

    fn open(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        let start = BytesStart::new(tag).with_attributes(attrs.iter().copied());
        self.0.write_event(Event::Start(start)).expect(IN_MEMORY);
    }

    fn close(&mut self, tag: &str) {
        self.0
            .write_event(Event::End(BytesEnd::new(tag)))
            .expect(IN_MEMORY);
    }

    fn empty(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        let start = BytesStart::new(tag).with_attributes(attrs.iter().copied());
        self.0.write_event(Event::Empty(start)).expect(IN_MEMORY);
    }

    fn text(&mut self, tag: &str, attrs: &[(&str, &str)], text: &str) {
        self.open(tag, attrs);
        self.0
            .write_event(Event::Text(BytesText::new(text)))
            .expect(IN_MEMORY);
        self.close(tag);
    }

    fn finish(self) -> String {
        let mut text = String::from_utf8(self.0.into_inner()).expect("the writer is fed UTF-8");
        text.push('\n');
        text
    }
}

/// The libvirt domain XML for `spec` (which must have passed `VmSpec::validate`).
///
/// QEMU kinds get machine `pc` and ACPI: without `<acpi/>` a guest's poweroff only halts it
/// and libvirt keeps the domain "running", and a graceful shutdown has nothing to press.
pub fn domain_xml(spec: &VmSpec) -> String {
    let domain_type = match spec.kind {
        VmKind::Kvm => "kvm",
        VmKind::Tcg => "qemu",
        VmKind::XenPv | VmKind::XenHvm => "xen",
    };
    let mut x = Xml::new();
    x.open("domain", &[("type", domain_type)]);
    x.text("name", &[], spec.name.as_str());
    x.text("memory", &[("unit", "MiB")], &spec.memory_mib.to_string());
    x.text("vcpu", &[], &spec.vcpus.to_string());

    x.open("os", &[]);
    let (machine, os_type) = match spec.kind {
        VmKind::Kvm | VmKind::Tcg => ("pc", "hvm"),
        VmKind::XenPv => ("xenpv", "xen"),
        VmKind::XenHvm => ("xenfv", "hvm"),
    };
    x.text("type", &[("arch", "x86_64"), ("machine", machine)], os_type);
    match &spec.boot {
        Some(boot) => {
            x.text("kernel", &[], &boot.kernel.to_string_lossy());
            if let Some(initrd) = &boot.initrd {
                x.text("initrd", &[], &initrd.to_string_lossy());
            }
            x.text("cmdline", &[], &boot.cmdline);
        }
        None => x.empty("boot", &[("dev", "hd")]),
    }
    x.close("os");

    if spec.kind != VmKind::XenPv {
        x.open("features", &[]);
        x.empty("acpi", &[]);
        x.empty("apic", &[]);
        if spec.kind == VmKind::XenHvm {
            x.empty("pae", &[]);
        }
        x.close("features");
    }
    x.text("on_poweroff", &[], "destroy");
    x.text("on_reboot", &[], "restart");
    x.text("on_crash", &[], "destroy");

    x.open("devices", &[]);
    for disk in &spec.disks {
        disk_xml(&mut x, disk);
    }
    for nic in &spec.nics {
        nic_xml(&mut x, nic, spec.kind);
    }
    if let Some(log) = &spec.console_log {
        let path = log.to_string_lossy();
        if spec.kind == VmKind::XenPv {
            // A PV guest has no emulated UART; its console is the Xen console (hvc0).
            x.open("console", &[("type", "file")]);
            x.empty("source", &[("path", &path)]);
            x.empty("target", &[("type", "xen"), ("port", "0")]);
            x.close("console");
        } else {
            // Appended, not truncated: a guest migrated in (whose QEMU opens the file while
            // the source's still writes to it) or started again continues the same log.
            x.open("serial", &[("type", "file")]);
            x.empty("source", &[("path", &path), ("append", "on")]);
            x.empty("target", &[("port", "0")]);
            x.close("serial");
            x.open("console", &[("type", "file")]);
            x.empty("source", &[("path", &path), ("append", "on")]);
            x.empty("target", &[("type", "serial"), ("port", "0")]);
            x.close("console");
        }
    }
    x.close("devices");
    x.close("domain");
    x.finish()
}

fn disk_xml(x: &mut Xml, disk: &DiskSpec) {
    // `validate` accepted the target, so it has a bus.
    let bus = target_bus(&disk.target).unwrap_or("virtio");
    x.open("disk", &[("type", "file"), ("device", "disk")]);
    x.empty("driver", &[("name", "qemu"), ("type", "qcow2")]);
    x.empty("source", &[("file", &disk.path.to_string_lossy())]);
    x.empty("target", &[("dev", &disk.target), ("bus", bus)]);
    x.close("disk");
}

/// `<target dev>` names the tap device (libvirt keeps a name that does not start with
/// `vnet`/`vif`, also across a migration); `<mtu>` sets the tap's MTU and, with virtio,
/// tells the guest its NIC's.
fn nic_xml(x: &mut Xml, nic: &NicSpec, kind: VmKind) {
    x.open("interface", &[("type", "bridge")]);
    x.empty("mac", &[("address", &nic.mac.to_string())]);
    x.empty("source", &[("bridge", nic.bridge.as_str())]);
    if let Some(device) = &nic.device {
        x.empty("target", &[("dev", device)]);
    }
    if !kind.is_xen() {
        x.empty("model", &[("type", "virtio")]);
    }
    if let Some(mtu) = nic.mtu {
        x.empty("mtu", &[("size", &mtu.to_string())]);
    }
    x.close("interface");
}

/// The XML for `virDomainSnapshotCreateXML`: just the name; libvirt picks the kind
/// (internal memory+disk for a running QEMU domain with qcow2 disks).
pub fn snapshot_xml(name: &SnapshotName) -> String {
    let mut x = Xml::new();
    x.open("domainsnapshot", &[]);
    x.text("name", &[], name.as_str());
    x.close("domainsnapshot");
    x.finish()
}

/// The file the first `<serial type='file'>` (or, for Xen PV, `<console type='file'>`)
/// of a domain writes to, read from libvirt's own XML for the domain.
pub fn console_path(domain_xml: &str) -> Option<PathBuf> {
    let mut reader = Reader::from_str(domain_xml);
    // The chardev element we are inside, if it is a file-backed serial or console.
    let mut in_file_chardev = false;
    let mut fallback = None;
    let mut in_serial = false;
    for _ in 0..1_000_000 {
        let event = reader.read_event().ok()?;
        match &event {
            Event::Start(e) if matches!(e.name().as_ref(), b"serial" | b"console") => {
                in_file_chardev = e
                    .try_get_attribute("type")
                    .ok()
                    .flatten()
                    .is_some_and(|a| a.value.as_ref() == b"file");
                in_serial = e.name().as_ref() == b"serial";
            }
            Event::End(e) if matches!(e.name().as_ref(), b"serial" | b"console") => {
                in_file_chardev = false;
            }
            Event::Empty(e) | Event::Start(e)
                if in_file_chardev && e.name().as_ref() == b"source" =>
            {
                let path = e.try_get_attribute("path").ok().flatten()?;
                let path = PathBuf::from(path.unescape_value().ok()?.into_owned());
                if in_serial {
                    return Some(path);
                }
                fallback.get_or_insert(path);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BootSpec, BridgeName, DiskSource, VmName};

    fn full_spec(kind: VmKind, target: &str) -> VmSpec {
        let mut s = VmSpec::new(VmName::new("web-1").unwrap(), kind, 2, 512);
        s.disks.push(DiskSpec {
            source: DiskSource::Blank {
                size_bytes: 1 << 30,
            },
            path: "/var/lib/cosm/web-1.qcow2".into(),
            target: target.into(),
        });
        s.nics.push(NicSpec::on_bridge(
            BridgeName::new("br0").unwrap(),
            "52:54:00:aa:bb:cc".parse().unwrap(),
        ));
        s.console_log = Some("/var/log/cosm/web-1.console".into());
        s
    }

    /// Every text and attribute value of `xml`, unescaped, in document order.
    fn values(xml: &str) -> Vec<String> {
        let mut reader = Reader::from_str(xml);
        let mut out = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Start(e) | Event::Empty(e) => {
                    for a in e.attributes() {
                        out.push(a.unwrap().unescape_value().unwrap().into_owned());
                    }
                }
                Event::Text(t) => {
                    let text = t.unescape().unwrap();
                    if !text.trim().is_empty() {
                        out.push(text.into_owned());
                    }
                }
                Event::Eof => return out,
                _ => {}
            }
        }
    }

    #[test]
    fn tcg_domain_has_qemu_type_machine_pc_acpi_and_a_file_serial() {
        let xml = domain_xml(&full_spec(VmKind::Tcg, "vda"));
        for part in [
            "<domain type=\"qemu\">",
            "<name>web-1</name>",
            "<memory unit=\"MiB\">512</memory>",
            "<vcpu>2</vcpu>",
            "<type arch=\"x86_64\" machine=\"pc\">hvm</type>",
            "<boot dev=\"hd\"/>",
            "<acpi/>",
            "<source file=\"/var/lib/cosm/web-1.qcow2\"/>",
            "<target dev=\"vda\" bus=\"virtio\"/>",
            "<mac address=\"52:54:00:aa:bb:cc\"/>",
            "<source bridge=\"br0\"/>",
            "<serial type=\"file\">",
        ] {
            assert!(xml.contains(part), "{part} missing from\n{xml}");
        }
        assert_eq!(
            console_path(&xml),
            Some("/var/log/cosm/web-1.console".into())
        );
        let kvm = domain_xml(&full_spec(VmKind::Kvm, "vda"));
        assert!(kvm.contains("<domain type=\"kvm\">"));
    }

    #[test]
    fn xen_domains_use_xen_types_and_buses() {
        let mut pv = full_spec(VmKind::XenPv, "xvda");
        pv.boot = Some(BootSpec {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: "console=hvc0".into(),
        });
        pv.validate().unwrap();
        let xml = domain_xml(&pv);
        assert!(xml.contains("<domain type=\"xen\">"));
        assert!(xml.contains("machine=\"xenpv\">xen</type>"));
        assert!(xml.contains("bus=\"xen\""));
        assert!(xml.contains("<target type=\"xen\" port=\"0\"/>"));
        assert!(!xml.contains("<serial"));
        assert_eq!(
            console_path(&xml),
            Some("/var/log/cosm/web-1.console".into())
        );
        let hvm = domain_xml(&full_spec(VmKind::XenHvm, "xvda"));
        assert!(hvm.contains("machine=\"xenfv\">hvm</type>"));
        assert!(hvm.contains("<pae/>"));
    }

    /// Names cannot be hostile (`VmName` refuses them), but paths and the kernel command
    /// line can hold anything printable: it must come back out of the XML unchanged, and
    /// never open an element.
    #[test]
    fn hostile_paths_and_cmdline_are_escaped() {
        let hostile_path = "/tmp/a'b\"c<d>&e/</source><disk>.qcow2";
        let hostile_cmdline = "console=ttyS0 x=\"'<devices/>&amp;";
        let mut s = full_spec(VmKind::Tcg, "vda");
        s.disks[0].path = hostile_path.into();
        s.console_log = Some(format!("{hostile_path}.log").into());
        s.boot = Some(BootSpec {
            kernel: hostile_path.into(),
            initrd: None,
            cmdline: hostile_cmdline.into(),
        });
        s.validate().unwrap();
        let xml = domain_xml(&s);
        assert!(!xml.contains("<devices/>"), "{xml}");
        assert_eq!(xml.matches("<disk ").count(), 1, "{xml}");
        let values = values(&xml);
        assert!(values.iter().any(|v| v == hostile_path), "{values:?}");
        assert!(values.iter().any(|v| v == hostile_cmdline), "{values:?}");
        assert_eq!(
            console_path(&xml),
            Some(format!("{hostile_path}.log").into())
        );
    }

    /// A plain NIC leaves the device name and MTU to libvirt; a tenant-network NIC names
    /// its tap and sets its MTU, inside its `<interface>`.
    #[test]
    fn a_nic_may_name_its_tap_and_set_its_mtu() {
        let mut s = full_spec(VmKind::Kvm, "vda");
        let plain = domain_xml(&s);
        assert!(!plain.contains("<target dev=\"cp"), "{plain}");
        assert!(!plain.contains("<mtu"), "{plain}");
        s.nics.push(NicSpec {
            bridge: BridgeName::new("cbr7").unwrap(),
            mac: "52:54:00:ab:cd:ef".parse().unwrap(),
            device: Some("cp525400abcdef".into()),
            mtu: Some(1450),
        });
        s.validate().unwrap();
        let xml = domain_xml(&s);
        let second = xml.split("<interface ").nth(2).expect("two interfaces");
        let second = &second[..second.find("</interface>").unwrap()];
        for part in [
            "<mac address=\"52:54:00:ab:cd:ef\"/>",
            "<source bridge=\"cbr7\"/>",
            "<target dev=\"cp525400abcdef\"/>",
            "<model type=\"virtio\"/>",
            "<mtu size=\"1450\"/>",
        ] {
            assert!(second.contains(part), "{part} missing from\n{second}");
        }
    }

    #[test]
    fn snapshot_xml_names_the_snapshot() {
        let xml = snapshot_xml(&SnapshotName::new("before-upgrade").unwrap());
        assert!(xml.contains("<name>before-upgrade</name>"), "{xml}");
    }
}
