//! A virtual rack: a network namespace with a bridge (192.0.2.1/24, the appliance's
//! provisioning network, IPv6 on for its router advertisements), the appliance inside it
//! serving DHCP, TFTP and HTTP boot, and
//! QEMU machines (`-accel tcg`) on tap devices, each booting from the network with one of
//! the four firmware paths real servers use; and hypervisor hosts ([`Host`]): namespaces on
//! the rack's bridge, each with its own libvirtd and a real `cosm-agent`. Used by
//! `tests/boot_rack.rs`, `tests/hypervisor_hosts.rs` and by the `vrack` binary that
//! `make demo` runs.

use crate::libvirtd::PrivateLibvirtd;
use crate::netns::{run_checked, NetNs, RUN_TIMEOUT};
use crate::Appliance;
use anyhow::{bail, Context};
use std::net::Ipv4Addr;
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
    /// OVMF's own PXE (no option ROM): TFTP-loads snponly.efi (iPXE), which fetches its script.
    UefiPxe,
    /// OVMF's UEFI HTTP Boot (PXE switched off): loads snponly.efi over HTTP.
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
    // Field order is drop order: the hosts (their agents, guests and libvirtd) stop
    // first, then the appliance, then its namespace.
    pub hosts: Vec<Host>,
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
        ("/usr/lib/ipxe/snponly.efi", "ipxe"),
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

/// The rack's provisioning segment inside `ns`: bridge `br0` with 192.0.2.1/24 and IPv6 on
/// (its link-local address, without duplicate address detection, made once a machine's
/// tap joins), so the appliance can send router advertisements on it. The namespace's
/// other interfaces keep IPv6 off.
pub fn provisioning_bridge(ns: &NetNs) -> anyhow::Result<()> {
    ip(ns, &["link", "add", "br0", "type", "bridge"])?;
    ip(ns, &["addr", "add", "192.0.2.1/24", "dev", "br0"])?;
    let mut sysctl = ns.command("sysctl");
    sysctl.args([
        "-qw",
        "net.ipv6.conf.br0.accept_dad=0",
        "net.ipv6.conf.br0.disable_ipv6=0",
    ]);
    ns.run_ok(sysctl)
        .context("cannot turn IPv6 on for the rack's bridge")?;
    ip(ns, &["link", "set", "br0", "up"])
}

/// Powers on QEMU machine number `n` (1..=99) on `ns`'s `br0`: MAC 52:54:00:c0:53:<n>, a
/// tap on the bridge, an empty 4 GiB disk and its serial console in `dir`, network boot
/// with `firmware`. The caller owns the process (it is `ns`'s child, killed by PID).
pub fn spawn_machine(ns: &NetNs, dir: &Path, n: u8, firmware: Firmware) -> anyhow::Result<Vm> {
    spawn_machine_with(ns, dir, n, firmware, 512)
}

/// [`spawn_machine`] with `memory_mib` of memory (an installed hypervisor host running a
/// guest needs more than the ramdisk's 512 MiB).
pub fn spawn_machine_with(
    ns: &NetNs,
    dir: &Path,
    n: u8,
    firmware: Firmware,
    memory_mib: u32,
) -> anyhow::Result<Vm> {
    let mac = format!("52:54:00:c0:53:{n:02x}");
    let tap = format!("tap{n}");
    ip(ns, &["tuntap", "add", &tap, "mode", "tap"])?;
    ip(ns, &["link", "set", &tap, "master", "br0", "up"])?;
    let (cpus, disk_bytes) = (2u32, 4u64 << 30);
    let disk = dir.join(format!("disk{n}.img"));
    std::fs::File::create(&disk)?.set_len(disk_bytes)?;
    let serial = dir.join(format!("serial{n}.log"));
    let mut q = ns.command("qemu-system-x86_64");
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
        let vars = dir.join(format!("vars{n}.fd"));
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
    let stderr = std::fs::File::create(dir.join(format!("qemu{n}.err")))?;
    q.stdout(Stdio::null()).stderr(stderr);
    let pid = ns.spawn(q)?;
    Ok(Vm {
        mac,
        firmware,
        cpus,
        memory_mib,
        disk_bytes,
        pid,
        serial,
    })
}

impl Rack {
    /// Namespace `<prefix>…`, bridge `br0` with 192.0.2.1/24 ([`provisioning_bridge`]),
    /// and the appliance on it: DHCP pool 192.0.2.100–199 with router advertisements,
    /// TFTP on port 69, HTTP API and boot on 192.0.2.1:8080. `extra_config` is appended
    /// to the appliance's config.
    pub fn start(prefix: &str, extra_config: &str) -> anyhow::Result<Rack> {
        Rack::start_with(prefix, extra_config, true)
    }

    /// [`Rack::start`], with the appliance's IPv6 router advertisements on or off
    /// (`dhcp.router_advertisements`; the bridge has IPv6 either way).
    pub fn start_with(
        prefix: &str,
        extra_config: &str,
        router_advertisements: bool,
    ) -> anyhow::Result<Rack> {
        require_rack_parts()?;
        let ns = NetNs::new(prefix)?;
        provisioning_bridge(&ns)?;
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
router_advertisements = {router_advertisements}
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.199"]
routers = ["192.0.2.1"]
{extra_config}"#,
            ramdisk = ramdisk_dir().display()
        );
        let app = Appliance::start_listening(Some(ns.name()), "192.0.2.1:8080", &config)?;
        Ok(Rack {
            hosts: Vec::new(),
            app,
            ns,
            dir: tempfile::tempdir()?,
            vms: Vec::new(),
        })
    }

    /// Powers on machine number `n` (1..=99): MAC 52:54:00:c0:53:<n>, a tap on the bridge,
    /// an empty 4 GiB disk, network boot with `firmware` ([`spawn_machine`]). Returns its
    /// index in `vms`.
    pub fn power_on(&mut self, n: u8, firmware: Firmware) -> anyhow::Result<usize> {
        self.power_on_with(n, firmware, 512)
    }

    /// [`Rack::power_on`] with `memory_mib` of memory.
    pub fn power_on_with(
        &mut self,
        n: u8,
        firmware: Firmware,
        memory_mib: u32,
    ) -> anyhow::Result<usize> {
        let vm = spawn_machine_with(&self.ns, self.dir.path(), n, firmware, memory_mib)?;
        self.vms.push(vm);
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

/// One step of a machine's timeline, for [`assert_steps_in_order`]: what a failure calls
/// it, and whether an event (kind, message) is it.
pub type Step<'a> = (&'a str, &'a dyn Fn(&str, &str) -> bool);

/// Asserts that every step is on `events` (kind, message, oldest first), each one's first
/// occurrence after the one before; the failure names `who`, the step and the timeline.
pub fn assert_steps_in_order(who: &str, events: &[(String, String)], steps: &[Step<'_>]) {
    let mut last: Option<(usize, &str)> = None;
    for (what, is) in steps {
        let at = events
            .iter()
            .position(|(k, m)| is(k, m))
            .unwrap_or_else(|| panic!("{who}: no {what} in {events:#?}"));
        if let Some((before, name)) = last {
            assert!(
                before < at,
                "{who}: {what} (event {at}) is not after {name} (event {before}): {events:#?}"
            );
        }
        last = Some((at, what));
    }
}

/// The rack's appliance API as hosts' agents reach it.
pub const APPLIANCE_URL: &str = "http://192.0.2.1:8080";

/// A hypervisor host of the rack: a network namespace whose `eth0` is a veth on the rack's
/// bridge, enslaved to a bridge `br0` of its own (the host's address, 192.0.2.(10+n), is on
/// `br0`, where VM NICs go too, so guests sit on the rack's network as on a real bridged
/// hypervisor), a [`PrivateLibvirtd`] listening on that address, and, once
/// [`Rack::start_host_agent`] ran, a real `cosm-agent` in the namespace.
#[derive(Debug)]
pub struct Host {
    /// Its number, 1..=80.
    pub n: u8,
    /// `52:54:00:c0:48:<n>`: `eth0`'s and `br0`'s MAC, what the agent enrols as.
    pub mac: String,
    pub addr: Ipv4Addr,
    /// The agent's PID in the namespace, once started.
    pub agent: Option<u32>,
    // Field order is drop order: the agent is stopped in `Drop`, then libvirtd (with its
    // guests), then the namespace, then the agent's state.
    pub libvirtd: PrivateLibvirtd,
    pub ns: NetNs,
    state_dir: tempfile::TempDir,
}

/// The bridge inside each host for VM NICs.
pub const HOST_BRIDGE: &str = "br0";

impl Host {
    /// `--hypervisor` for the agent, and what tests connect to: the libvirtd's unix socket.
    pub fn uri(&self) -> String {
        self.libvirtd.uri()
    }

    /// `--migration-uri`: what other hosts' libvirtd migrate to (`qemu+tcp://ADDR/system`).
    pub fn tcp_uri(&self) -> String {
        self.libvirtd.tcp_uri()
    }

    /// The agent's private state directory (credential, VM files).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The agent's stderr.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The agent first, so it does not restart guests while libvirtd takes them down.
        if let Some(pid) = self.agent.take() {
            let _ = self.ns.kill(pid);
        }
    }
}

impl Rack {
    /// Adds hypervisor host number `n` (1..=80): its namespace on the rack's bridge at
    /// 192.0.2.(10+n), its `br0`, and its libvirtd. No agent yet
    /// ([`Rack::start_host_agent`]). Returns its index in `hosts`.
    pub fn add_host(&mut self, n: u8) -> anyhow::Result<usize> {
        if !(1..=80).contains(&n) {
            bail!("host number {n} is out of 1..=80");
        }
        if self.hosts.iter().any(|h| h.n == n) {
            bail!("host {n} already exists");
        }
        let mac = format!("52:54:00:c0:48:{n:02x}");
        let addr = Ipv4Addr::new(192, 0, 2, 10 + n);
        let ns = NetNs::new("h")?;
        let outside = format!("hv{n}");
        let mut link = std::process::Command::new("ip");
        link.args(["link", "add", &outside, "netns", self.ns.name()])
            .args(["type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        run_checked(link, RUN_TIMEOUT)?;
        ip(&self.ns, &["link", "set", &outside, "master", "br0", "up"])?;
        ip(&ns, &["link", "set", "eth0", "address", &mac])?;
        ip(&ns, &["link", "add", HOST_BRIDGE, "type", "bridge"])?;
        ip(&ns, &["link", "set", HOST_BRIDGE, "address", &mac])?;
        ip(&ns, &["link", "set", "eth0", "master", HOST_BRIDGE, "up"])?;
        ip(
            &ns,
            &["addr", "add", &format!("{addr}/24"), "dev", HOST_BRIDGE],
        )?;
        ip(&ns, &["link", "set", HOST_BRIDGE, "up"])?;
        // No default route: nothing outside the rack is reachable, so name lookups
        // (libvirt resolves its own hostname during a migration) fail at once instead of
        // waiting for a DNS server that never answers (a migration took 66 s with one).
        let libvirtd = PrivateLibvirtd::start(&ns, addr)?;
        self.hosts.push(Host {
            n,
            mac,
            addr,
            agent: None,
            libvirtd,
            ns,
            state_dir: tempfile::Builder::new().prefix("cosm-host").tempdir()?,
        });
        Ok(self.hosts.len() - 1)
    }

    /// A fresh enrolment token (scope `enroll`), as an operator makes one.
    pub fn enroll_token(&self, name: &str) -> anyhow::Result<String> {
        let v = self.app.api_send(
            "POST",
            "/api/v1/tokens",
            &serde_json::json!({"name": name, "scope": "enroll"}),
        )?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no token in the answer: {v}"))
    }

    /// The rack's shared VM storage: every host's agent keeps its VM files here
    /// (`--vm-dir`), as hosts that live-migrate to each other share storage at one path
    /// (migration copies no disks).
    pub fn vm_storage(&self) -> PathBuf {
        self.dir.path().join("vm-storage")
    }

    /// Starts the host's `cosm-agent` in its namespace: against the rack's appliance, as
    /// its MAC, with a fresh enrolment token, its own state directory, `--hypervisor` its
    /// libvirtd's unix URI, `--migration-uri` its TCP URI, and `--vtep-ip` its address
    /// with `--vtep-dev br0` (the rack is also the hosts' data network). Power actions are simulated
    /// (`--dry-run-actions`): a reboot queued to a rack host must not reboot the machine
    /// the tests run on.
    pub fn start_host_agent(&mut self, host: usize) -> anyhow::Result<()> {
        self.spawn_host_agent(host, false)
    }

    /// Like [`Rack::start_host_agent`], but the agent runs its VM controller on the
    /// simulated hypervisor (`--simulate-vms`: VMs "run" in memory, no QEMU), reconciling
    /// every second. Its VM files still go to the rack's shared storage. For HA and scale
    /// measurements, where what runs in the VMs does not matter. Started again after its
    /// agent was killed (set `agent` to `None` first), it keeps its state directory, so
    /// its credential.
    pub fn start_simulated_host_agent(&mut self, host: usize) -> anyhow::Result<()> {
        self.spawn_host_agent(host, true)
    }

    fn spawn_host_agent(&mut self, host: usize, simulated: bool) -> anyhow::Result<()> {
        let token = self.enroll_token(&format!("host-{}", self.hosts[host].n))?;
        let storage = self.vm_storage();
        std::fs::create_dir_all(&storage)?;
        let h = &mut self.hosts[host];
        if h.agent.is_some() {
            bail!("host {} already runs its agent", h.n);
        }
        let agent = crate::bin("cosm-agent");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.state_dir.path().join("agent.log"))?;
        let mut cmd = h.ns.command(&agent.to_string_lossy());
        cmd.args(["run", "--appliance", APPLIANCE_URL, "--token", &token])
            .args([
                "--mac",
                &h.mac,
                "--cmdline",
                "/dev/null",
                "--dry-run-actions",
            ])
            .arg("--state-dir")
            .arg(h.state_dir.path());
        if simulated {
            cmd.args(["--simulate-vms", "--vm-interval", "1s"]);
        } else {
            cmd.args(["--hypervisor", &h.libvirtd.uri()])
                .args(["--migration-uri", &h.libvirtd.tcp_uri()]);
        }
        // The hosts' data network is the rack's: their address is on their `br0`, which
        // is where the VXLAN devices of tenant networks send through.
        cmd.args(["--vtep-ip", &h.addr.to_string(), "--vtep-dev", HOST_BRIDGE]);
        cmd.arg("--vm-dir")
            .arg(&storage)
            .env_remove("COSM_TOKEN")
            .env_remove("COSM_APPLIANCE")
            .stdout(Stdio::null())
            .stderr(log);
        h.agent = Some(h.ns.spawn(cmd)?);
        Ok(())
    }

    /// Waits until the host's agent registered (its machine is known to the appliance and
    /// has an `agent_registered` event); fails with the agent's log if it exits or time
    /// runs out.
    pub fn wait_host_registered(&self, host: usize, timeout: Duration) -> anyhow::Result<()> {
        let h = &self.hosts[host];
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .timeline(&h.mac)
                .iter()
                .any(|(k, _)| k == "agent_registered")
            {
                return Ok(());
            }
            let exited = match h.agent {
                Some(pid) => h.ns.try_wait(pid)?,
                None => bail!("host {} has no agent: call start_host_agent first", h.n),
            };
            if let Some(status) = exited {
                bail!(
                    "the agent of host {} ({}) exited ({status}); its log:\n{}",
                    h.n,
                    h.mac,
                    h.agent_log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of host {} ({}) did not register within {timeout:?}; its log:\n{}",
                    h.n,
                    h.mac,
                    h.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Makes a registered machine a VM host as an operator would, with the admin token:
    /// role `host` (discovered → ready), then deploying → deployed → active (no installer
    /// runs: the host is already up). Returns the machine as the API shows it.
    pub fn make_vm_host(&self, mac: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/machines/{mac}");
        self.app.api_send(
            "PUT",
            &format!("{path}/role"),
            &serde_json::json!({"role": "host"}),
        )?;
        let mut m = serde_json::Value::Null;
        for state in ["deploying", "deployed", "active"] {
            m = self.app.api_send(
                "POST",
                &format!("{path}/state"),
                &serde_json::json!({"state": state, "reason": "virtual rack hypervisor host"}),
            )?;
        }
        Ok(m)
    }

    /// Waits until `/api/v1/hosts` lists `count` hosts: their agents reported their
    /// hypervisors, so VMs can be placed on them.
    pub fn wait_hosts_reporting(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let hosts = self.app.api("/api/v1/hosts")?;
            if hosts.as_array().is_some_and(|h| h.len() >= count) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{count} hosts did not report within {timeout:?}: {hosts}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Brings up `count` hypervisor hosts (numbers 1..=count) with their agents, waits for
    /// each to register and makes each an active VM host. The hosts are `self.hosts`.
    pub fn start_hosts(&mut self, count: u8, timeout: Duration) -> anyhow::Result<()> {
        let first = self.hosts.len();
        for n in 1..=count {
            let i = self.add_host(n)?;
            self.start_host_agent(i)?;
        }
        for i in first..self.hosts.len() {
            self.wait_host_registered(i, timeout)?;
            let mac = self.hosts[i].mac.clone();
            self.make_vm_host(&mac)?;
        }
        Ok(())
    }
}
