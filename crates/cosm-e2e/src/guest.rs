//! The tiny test guest (`images/guest.sh`): the agent ramdisk's kernel with
//! `images/out/guest-initrd.img`, booted as a QEMU TCG domain. Its serial console says
//!
//! ```text
//! COSM-GUEST <marker> boot=<N>
//! counter 1
//! counter 2
//! ```
//!
//! with `<marker>` from `cosm.marker=` on the kernel command line and `N` the boot count
//! kept in the first sector of its disk (`/dev/vda`; 0 without one), then a counter every
//! second. The ACPI power button powers it off. [`guest_spec`] describes one;
//! [`Console`] reads what it printed; [`wait_console`] waits for a condition on it.
//!
//! With a NIC and the kernel's `ip=<client-ip>::<gw-ip>:<netmask>::<device>:off` (see
//! [`net_cmdline`]) it configures its virtio NIC, says so, answers TCP port 22 with one
//! line (`COSM-GUEST tcp22 <marker> <client-ip>`), and with `cosm.ping=<ip>` pings that
//! address about once a second, forever:
//!
//! ```text
//! COSM-GUEST net 10.20.0.2 dev=eth0 mtu=1450
//! ping 1 10.20.0.3 fail
//! ping 2 10.20.0.3 ok
//! ```

use anyhow::bail;
use cosm_hypervisor::{BootSpec, DiskSource, DiskSpec, Hypervisor, VmKind, VmName, VmSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The console lines [`wait_console`] reads each time.
const TAIL_LINES: usize = 5_000;

/// The kernel and initrd of the guest, or what to run to make them.
pub fn guest_images() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = crate::rack::ramdisk_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("guest-initrd.img"));
    for f in [&kernel, &initrd] {
        if !f.exists() {
            bail!(
                "{} is missing: run `make image` (images/build.sh, then images/guest.sh)",
                f.display()
            );
        }
    }
    Ok((kernel, initrd))
}

/// A TCG guest `name` (1 vCPU, 128 MiB) printing `marker`, with its files in `dir`
/// (copies of the kernel and initrd, its console log `<name>.console`, and with
/// `disk_bytes` a blank qcow2 disk `<name>.qcow2` as `vda`, made at `define`).
pub fn guest_spec(
    dir: &Path,
    name: &VmName,
    marker: &str,
    disk_bytes: Option<u64>,
) -> anyhow::Result<VmSpec> {
    let (kernel, initrd) = guest_images()?;
    std::fs::create_dir_all(dir)?;
    let (k, i) = (dir.join("guest-vmlinuz"), dir.join("guest-initrd.img"));
    // libvirt may take over what a guest uses; it only ever sees copies.
    if !k.exists() {
        std::fs::copy(&kernel, &k)?;
        std::fs::copy(&initrd, &i)?;
    }
    let mut spec = VmSpec::new(name.clone(), VmKind::Tcg, 1, 128);
    spec.boot = Some(BootSpec {
        kernel: k,
        initrd: Some(i),
        cmdline: format!("console=ttyS0 quiet cosm.marker={marker}"),
    });
    spec.console_log = Some(dir.join(format!("{name}.console")));
    if let Some(size_bytes) = disk_bytes {
        spec.disks.push(DiskSpec {
            source: DiskSource::Blank { size_bytes },
            path: dir.join(format!("{name}.qcow2")),
            target: "vda".into(),
        });
    }
    Ok(spec)
}

/// What the guest printed, read from its console lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Console {
    /// Each `COSM-GUEST` line: (marker, boot count), in order.
    pub boots: Vec<(String, u64)>,
    /// Each `counter` value, in order.
    pub counters: Vec<u64>,
    /// Each `COSM-GUEST net` line: the address and MTU the guest's NIC got.
    pub nets: Vec<GuestNet>,
    /// Each ping outcome, in order.
    pub pings: Vec<Ping>,
}

/// A `COSM-GUEST net <ip> dev=<dev> mtu=<mtu>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub ip: String,
    pub dev: String,
    pub mtu: Option<u16>,
}

/// A `ping <seq> <ip> ok|fail` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub seq: u64,
    pub target: String,
    pub ok: bool,
}

/// The kernel command-line words that give the guest's NIC `ip`/`prefix` (gateway
/// `gateway`, if any) and, with `ping`, make it ping that address every second.
pub fn net_cmdline(ip: &str, prefix: u8, gateway: Option<&str>, ping: Option<&str>) -> String {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let mask = std::net::Ipv4Addr::from(mask);
    let mut words = format!("ip={ip}::{}:{mask}::eth0:off", gateway.unwrap_or(""));
    if let Some(p) = ping {
        words.push_str(&format!(" cosm.ping={p}"));
    }
    words
}

impl Console {
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> Console {
        let mut c = Console::default();
        for line in lines {
            // The kernel's own lines may share a line with ours; ours are at its end.
            let line = line.as_ref().trim_end();
            if let Some(rest) = line.find("COSM-GUEST net ").map(|at| &line[at + 15..]) {
                let mut words = rest.split_whitespace();
                let ip = words.next().unwrap_or_default().to_string();
                let (mut dev, mut mtu) = (String::new(), None);
                for w in words {
                    if let Some(d) = w.strip_prefix("dev=") {
                        dev = d.to_string();
                    } else if let Some(m) = w.strip_prefix("mtu=") {
                        mtu = m.parse().ok();
                    }
                }
                c.nets.push(GuestNet { ip, dev, mtu });
            } else if let Some(rest) = line.find("COSM-GUEST ").map(|at| &line[at + 11..]) {
                if let Some((marker, boot)) = rest.split_once(" boot=") {
                    if let Ok(n) = boot.trim().parse() {
                        c.boots.push((marker.to_string(), n));
                    }
                }
            } else if let Some(n) = line
                .strip_prefix("counter ")
                .and_then(|n| n.trim().parse().ok())
            {
                c.counters.push(n);
            } else if let Some(rest) = line.strip_prefix("ping ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [seq, target, outcome @ ("ok" | "fail")] = words[..] {
                    if let Ok(seq) = seq.parse() {
                        c.pings.push(Ping {
                            seq,
                            target: target.to_string(),
                            ok: outcome == "ok",
                        });
                    }
                }
            }
        }
        c
    }

    /// The outcome of the last ping printed.
    pub fn last_ping(&self) -> Option<&Ping> {
        self.pings.last()
    }

    /// The last counter value printed.
    pub fn last_counter(&self) -> Option<u64> {
        self.counters.last().copied()
    }
}

/// Polls `name`'s console until `done` holds (returns the console then), or fails after
/// `timeout` showing its tail.
pub fn wait_console(
    hv: &dyn Hypervisor,
    name: &VmName,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Console) -> bool,
) -> anyhow::Result<Console> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = hv.console_tail(name, TAIL_LINES).unwrap_or_default();
        let console = Console::parse(&lines);
        if done(&console) {
            return Ok(console);
        }
        if Instant::now() > deadline {
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            bail!(
                "{name}: {what} did not happen within {timeout:?}; its console ends with:\n{tail}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts the guest into the rack's image repository with `cosmctl images upload`:
/// `guest-vmlinuz`, `guest-initrd.img`, and `guest-base.qcow2`, an empty 64 MiB qcow2 that
/// VM disks overlay (its first sector, zeros, is the boot counter).
pub fn upload_guest(rack: &crate::rack::Rack) -> anyhow::Result<()> {
    let (kernel, initrd) = guest_images()?;
    let base = rack.vm_storage().with_file_name("guest-base.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .output()
        .map_err(|e| {
            anyhow::anyhow!("cannot run qemu-img ({e}): install the Debian package qemu-utils")
        })?;
    if !out.status.success() {
        bail!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (path, name) in [
        (kernel.as_path(), "guest-vmlinuz"),
        (initrd.as_path(), "guest-initrd.img"),
        (base.as_path(), "guest-base.qcow2"),
    ] {
        let out = rack
            .app
            .cosmctl(&["images", "upload", &path.to_string_lossy(), "--name", name]);
        if !out.status.success() {
            bail!("uploading {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// The `POST /api/v1/vms` body of a test guest (TCG, 1 vCPU, `memory_mib`, an overlay of
/// `guest-base.qcow2`, a NIC on the hosts' `br0`) printing `name` as its marker; the
/// images must be in the repository ([`upload_guest`]).
pub fn guest_vm_request(name: &str, memory_mib: u64) -> serde_json::Value {
    serde_json::json!({
        "name": name, "kind": "tcg", "vcpus": 1, "memory_mib": memory_mib,
        "disks": [{"image": {"image": "guest-base.qcow2"}}],
        "nics": [{"bridge": crate::rack::HOST_BRIDGE}],
        "boot": {"kernel": "guest-vmlinuz", "initrd": "guest-initrd.img",
                 "cmdline": format!("console=ttyS0 quiet cosm.marker={name}")},
    })
}

/// Polls `GET /api/v1/vms/{name}` until `done` holds (returns the record then); fails
/// after `timeout` with the record and its timeline.
pub fn wait_vm(
    app: &crate::Appliance,
    name: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = app.api(&format!("/api/v1/vms/{name}"))?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            let tl = app.api(&format!("/api/v1/vms/{name}/events"))?;
            bail!(
                "{name}: {what} did not happen within {timeout:?}.\nrecord: {v}\ntimeline: {tl:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A VM's console as the appliance shows it (what its host's agent last reported).
pub fn api_console(app: &crate::Appliance, name: &str) -> anyhow::Result<Console> {
    let c = app.api(&format!("/api/v1/vms/{name}/console?lines=200"))?;
    let lines: Vec<String> = c["lines"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{name}'s console has no lines: {c}"))?
        .iter()
        .filter_map(|l| l.as_str().map(String::from))
        .collect();
    Ok(Console::parse(&lines))
}

/// The messages of a VM's timeline, oldest first.
pub fn vm_timeline(app: &crate::Appliance, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(app
        .api(&format!("/api/v1/vms/{name}/events"))?
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{name}'s events are not a list"))?
        .iter()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_read() {
        let lines = [
            "[    1.0] random kernel line",
            "COSM-GUEST m-1 boot=3",
            "counter 1",
            "counter 2\r",
            "counterfeit 7",
        ];
        let c = Console::parse(&lines);
        assert_eq!(c.boots, vec![("m-1".to_string(), 3)]);
        assert_eq!(c.counters, vec![1, 2]);
        assert_eq!(c.last_counter(), Some(2));
        assert!(c.nets.is_empty() && c.pings.is_empty());
    }

    /// As the guest printed them, booted by hand in QEMU (see images/guest.sh).
    #[test]
    fn network_lines_are_read() {
        let lines = [
            "\u{1b}[?7l\u{1b}[2JCOSM-GUEST hand-1 boot=0",
            "COSM-GUEST net 198.51.100.2 dev=eth0 mtu=1450",
            "counter 1",
            "ping 1 198.51.100.1 ok",
            "ping 2 198.51.100.9 fail\r",
            "ping x 198.51.100.9 fail",
            "ping 3 198.51.100.9 maybe",
        ];
        let c = Console::parse(&lines);
        assert_eq!(c.boots, vec![("hand-1".to_string(), 0)]);
        assert_eq!(
            c.nets,
            vec![GuestNet {
                ip: "198.51.100.2".into(),
                dev: "eth0".into(),
                mtu: Some(1450)
            }]
        );
        assert_eq!(c.pings.len(), 2);
        assert!(c.pings[0].ok && c.pings[0].target == "198.51.100.1");
        assert_eq!(
            c.last_ping(),
            Some(&Ping {
                seq: 2,
                target: "198.51.100.9".into(),
                ok: false
            })
        );
    }

    #[test]
    fn the_net_cmdline_is_the_kernels_ip_parameter() {
        assert_eq!(
            net_cmdline("10.20.0.2", 24, Some("10.20.0.1"), Some("10.20.0.3")),
            "ip=10.20.0.2::10.20.0.1:255.255.255.0::eth0:off cosm.ping=10.20.0.3"
        );
        assert_eq!(
            net_cmdline("10.20.0.2", 29, None, None),
            "ip=10.20.0.2:::255.255.255.248::eth0:off"
        );
    }
}
