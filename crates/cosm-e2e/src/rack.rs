//! A virtual rack: a network namespace with a bridge (192.0.2.1/24, the appliance's
//! provisioning network), the appliance inside it serving DHCP, TFTP and HTTP boot, and
//! QEMU machines (`-accel tcg`) on tap devices, each booting from the network with one of
//! the four firmware paths real servers use. Used by `tests/tests/boot_rack.rs` and by the
//! `vrack` binary that `make demo` runs.

use crate::netns::NetNs;
use crate::Appliance;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How a machine boots from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS running the NIC's iPXE option ROM.
    BiosIpxeRom,
    /// OVMF running the NIC's iPXE option ROM (its UEFI driver).
    UefiIpxeRom,
    /// OVMF's own PXE (no option ROM): TFTP-loads ipxe.efi, which fetches its script.
    UefiPxe,
    /// OVMF's UEFI HTTP Boot (PXE switched off): loads ipxe.efi over HTTP.
    UefiHttp,
}

impl Firmware {
    pub const ALL: [Firmware; 4] = [
        Firmware::BiosIpxeRom,
        Firmware::UefiIpxeRom,
        Firmware::UefiPxe,
        Firmware::UefiHttp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Firmware::BiosIpxeRom => "BIOS + iPXE ROM",
            Firmware::UefiIpxeRom => "UEFI + iPXE ROM",
            Firmware::UefiPxe => "UEFI PXE",
            Firmware::UefiHttp => "UEFI HTTP Boot",
        }
    }

    fn uefi(self) -> bool {
        self != Firmware::BiosIpxeRom
    }
}

/// One QEMU machine of the rack.
#[derive(Debug)]
pub struct Vm {
    pub mac: String,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub pid: u32,
    pub serial: PathBuf,
}

/// The namespace, the appliance and the machines; everything is stopped (by PID) and
/// deleted on drop.
#[derive(Debug)]
pub struct Rack {
    // Field order is drop order: the appliance stops before its namespace goes.
    pub app: Appliance,
    pub ns: NetNs,
    dir: tempfile::TempDir,
    pub vms: Vec<Vm>,
}

/// The directory `make image` writes the agent ramdisk to.
pub fn ramdisk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/out")
}

/// Fails with what to install when a part of the rack is missing.
pub fn require_rack_parts() -> anyhow::Result<()> {
    let images = ramdisk_dir();
    for f in ["vmlinuz", "initramfs.img"] {
        if !images.join(f).exists() {
            bail!(
                "{} is missing: build the agent ramdisk with `make image` (`make test` and `make demo` do)",
                images.join(f).display()
            );
        }
    }
    for (path, package) in [
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
        ("/usr/lib/ipxe/ipxe.efi", "ipxe"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
    ] {
        if !Path::new(path).exists() {
            bail!("{path} is missing: install the Debian package {package} (`make deps` does)");
        }
    }
    Ok(())
}

fn ip(ns: &NetNs, args: &[&str]) -> anyhow::Result<()> {
    let mut c = ns.command("ip");
    c.args(args);
    ns.run_ok(c).map(|_| ())
}

impl Rack {
    /// Namespace `<prefix>…`, bridge `br0` with 192.0.2.1/24, and the appliance on it:
    /// DHCP pool 192.0.2.100–199, TFTP on port 69, HTTP API and boot on 192.0.2.1:8080.
    /// `extra_config` is appended to the appliance's config.
    pub fn start(prefix: &str, extra_config: &str) -> anyhow::Result<Rack> {
        require_rack_parts()?;
        let ns = NetNs::new(prefix)?;
        ip(&ns, &["link", "add", "br0", "type", "bridge"])?;
        ip(&ns, &["addr", "add", "192.0.2.1/24", "dev", "br0"])?;
        ip(&ns, &["link", "set", "br0", "up"])?;
        // `extra_config` may set its own [agents].
        let agents = if extra_config.contains("[agents]") {
            ""
        } else {
            "[agents]\nheartbeat_secs = 2\nmissed_beats = 5\n"
        };
        let config = format!(
            r#"
{agents}
[boot]
ramdisk_dir = "{ramdisk}"
agent_dir = "{ramdisk}"
[tftp]
[dhcp]
server_id = "192.0.2.1"
interface = "br0"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.199"]
routers = ["192.0.2.1"]
{extra_config}"#,
            ramdisk = ramdisk_dir().display()
        );
        let app = Appliance::start_listening(Some(ns.name()), "192.0.2.1:8080", &config)?;
        Ok(Rack {
            app,
            ns,
            dir: tempfile::tempdir()?,
            vms: Vec::new(),
        })
    }

    /// Powers on machine number `n` (1..=99): MAC 52:54:00:c0:53:<n>, a tap on the bridge,
    /// an empty 4 GiB disk, network boot with `firmware`. Returns its index in `vms`.
    pub fn power_on(&mut self, n: u8, firmware: Firmware) -> anyhow::Result<usize> {
        let mac = format!("52:54:00:c0:53:{n:02x}");
        let tap = format!("tap{n}");
        ip(&self.ns, &["tuntap", "add", &tap, "mode", "tap"])?;
        ip(&self.ns, &["link", "set", &tap, "master", "br0", "up"])?;
        let (cpus, memory_mib, disk_bytes) = (2u32, 512u32, 4u64 << 30);
        let disk = self.dir.path().join(format!("disk{n}.img"));
        std::fs::File::create(&disk)?.set_len(disk_bytes)?;
        let serial = self.dir.path().join(format!("serial{n}.log"));
        let mut q = self.ns.command("qemu-system-x86_64");
        q.args(["-accel", "tcg", "-display", "none", "-monitor", "none"])
            .args(["-smp", &cpus.to_string(), "-m", &memory_mib.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=2"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            ]);
        if firmware.uefi() {
            let vars = self.dir.path().join(format!("vars{n}.fd"));
            std::fs::copy(OVMF_VARS, &vars).context("cannot copy the OVMF variable store")?;
            q.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        let nic = match firmware {
            // QEMU's default ROM for virtio-net is iPXE (BIOS and UEFI in one file).
            Firmware::BiosIpxeRom | Firmware::UefiIpxeRom => {
                format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1")
            }
            // No option ROM: OVMF's own virtio-net driver and network stack.
            Firmware::UefiPxe | Firmware::UefiHttp => {
                format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1,romfile=")
            }
        };
        q.arg("-device").arg(nic);
        if firmware == Firmware::UefiHttp {
            // OVMF tries PXE before HTTP; switch PXE off so the HTTP Boot path is taken.
            q.args([
                "-fw_cfg",
                "name=opt/org.tianocore/IPv4PXESupport,string=n",
                "-fw_cfg",
                "name=opt/org.tianocore/IPv6PXESupport,string=n",
            ]);
        }
        let stderr = std::fs::File::create(self.dir.path().join(format!("qemu{n}.err")))?;
        q.stdout(Stdio::null()).stderr(stderr);
        let pid = self.ns.spawn(q)?;
        self.vms.push(Vm {
            mac,
            firmware,
            cpus,
            memory_mib,
            disk_bytes,
            pid,
            serial,
        });
        Ok(self.vms.len() - 1)
    }

    /// What the machine printed on its serial console so far.
    pub fn serial(&self, vm: usize) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.vms[vm].serial).unwrap_or_default())
            .into_owned()
    }

    /// The machine's timeline as (kind, message), oldest first; empty if it is unknown.
    pub fn timeline(&self, mac: &str) -> Vec<(String, String)> {
        let Ok(v) = self
            .app
            .api(&format!("/api/v1/machines/{mac}/events?limit=200"))
        else {
            return Vec::new();
        };
        let mut events: Vec<(u64, String, String)> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["seq"].as_u64().unwrap_or(0),
                            e["kind"].as_str().unwrap_or_default().to_string(),
                            e["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        events.sort_by_key(|e| e.0);
        events.into_iter().map(|(_, k, m)| (k, m)).collect()
    }

    /// Waits until the machine's agent registered: on the appliance's timeline and on its
    /// serial console. `progress` is called with each new timeline line.
    pub fn wait_registered(
        &self,
        vm: usize,
        timeout: Duration,
        mut progress: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let mac = self.vms[vm].mac.clone();
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let events = self.timeline(&mac);
            for (kind, message) in events.iter().skip(seen) {
                progress(kind, message);
            }
            seen = seen.max(events.len());
            let registered = events.iter().any(|(k, _)| k == "agent_registered");
            if registered && self.serial(vm).contains(&format!("enrolled as {mac}")) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.ns.try_wait(self.vms[vm].pid) {
                let err = std::fs::read_to_string(self.vms[vm].serial.with_file_name(format!(
                        "qemu{}.err",
                        self.vms[vm]
                            .serial
                            .file_stem()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .trim_start_matches("serial")
                    )))
                .unwrap_or_default();
                bail!("QEMU for {mac} exited ({status}): {err}");
            }
            if Instant::now() > deadline {
                let serial = self.serial(vm);
                let tail: String = serial
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                bail!(
                    "{} ({}) did not register within {} s.\ntimeline:\n{}\nserial console (tail):\n{tail}",
                    mac,
                    self.vms[vm].firmware.label(),
                    timeout.as_secs(),
                    events
                        .iter()
                        .map(|(k, m)| format!("  {k}: {m}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Powers a machine off (SIGKILL, by PID).
    pub fn power_off(&self, vm: usize) {
        let _ = self.ns.kill(self.vms[vm].pid);
    }
}
