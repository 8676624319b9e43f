//! The power drivers against real BMC emulators driving a real QEMU domain: Redfish
//! through sushy-emulator, IPMI through virtualbmc and ipmitool, both on a private libvirtd
//! (`cosm_e2e::libvirtd`) in a namespace with the appliance's provisioning bridge.
//!
//! For each driver: status, off (libvirt says shut off), on (running), cycle (a new QEMU
//! process, or on from off), fencing, and PXE boot-once: a machine that is off and boots
//! from its disk only is set to PXE once and powered on, and the appliance gives its MAC a
//! DHCP lease. Wrong credentials give `AuthFailed` and a port nothing listens on gives
//! `Unreachable`, within seconds. Each call's time is printed (`--nocapture`).
//!
//! Needs root, libvirtd, QEMU, ipmitool and the emulators in `.venv` (`make deps`); fails,
//! never skips, naming what is missing.

use cosm_e2e::bmc::{in_netns, require_bmc_emulators, SushyEmulator, VirtualBmc};
use cosm_e2e::libvirtd::{require_libvirtd, PrivateLibvirtd};
use cosm_e2e::netns::NetNs;
use cosm_e2e::Appliance;
use cosm_power::{fence, PowerDriver, PowerError};
use cosm_wire::{MacAddr, PowerAction, PowerSettings, PowerState};
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// From power-on with PXE set to the appliance seeing the machine's DHCP (TCG, SeaBIOS,
/// iPXE ROM), with room for a loaded machine.
const PXE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the machine runs without PXE set before the test checks it asked for no DHCP.
const DISK_ONLY_WAIT: Duration = Duration::from_secs(10);
/// How long libvirt may take to show a power change the BMC accepted.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace with bridge br0 (192.0.2.1/24), the appliance serving DHCP on it, and a
/// private libvirtd with one small domain whose NIC is on br0 and which boots from its
/// (empty) disk only.
struct Lab {
    domain: String,
    mac: String,
    libvirtd: PrivateLibvirtd,
    app: Appliance,
    ns: NetNs,
}

impl Lab {
    fn start(prefix: &str, domain: &str, mac: &str) -> Lab {
        require_libvirtd().unwrap();
        require_bmc_emulators().unwrap();
        let ns = NetNs::new(prefix).unwrap();
        for args in [
            &["link", "add", "br0", "type", "bridge"][..],
            &["addr", "add", "192.0.2.1/24", "dev", "br0"],
            &["link", "set", "br0", "up"],
        ] {
            let mut c = ns.command("ip");
            c.args(args);
            ns.run_ok(c).unwrap();
        }
        let config = r#"
[dhcp]
server_id = "192.0.2.1"
interface = "br0"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.199"]
routers = ["192.0.2.1"]
"#;
        let app = Appliance::start_listening(Some(ns.name()), "192.0.2.1:8080", config).unwrap();
        let libvirtd = PrivateLibvirtd::start(&ns, Ipv4Addr::new(192, 0, 2, 1)).unwrap();
        let lab = Lab {
            domain: domain.to_string(),
            mac: mac.to_string(),
            libvirtd,
            app,
            ns,
        };
        lab.define();
        lab
    }

    fn define(&self) {
        let dir = self.libvirtd.guest_dir();
        let disk = dir.join(format!("{}.qcow2", self.domain));
        let mut img = Command::new("qemu-img");
        img.args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M");
        cosm_e2e::netns::run_checked(img, Duration::from_secs(30)).unwrap();
        let xml = format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='br0'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"#,
            name = self.domain,
            disk = disk.display(),
            mac = self.mac,
        );
        let path = dir.join(format!("{}.xml", self.domain));
        std::fs::write(&path, xml).unwrap();
        let mut define = self.virsh();
        define.arg("define").arg(&path);
        cosm_e2e::netns::run_checked(define, Duration::from_secs(30)).unwrap();
    }

    fn virsh(&self) -> Command {
        let mut c = Command::new("virsh");
        c.args(["-q", "-c", &self.libvirtd.uri()]);
        c
    }

    /// What libvirt says: `running`, `shut off`, …
    fn domstate(&self) -> String {
        let mut c = self.virsh();
        c.args(["domstate", &self.domain]);
        cosm_e2e::netns::run_checked(c, Duration::from_secs(30))
            .unwrap()
            .trim()
            .to_string()
    }

    fn wait_domstate(&self, want: &str) -> Duration {
        let start = Instant::now();
        loop {
            let now = self.domstate();
            if now == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < STATE_TIMEOUT,
                "libvirt still says {now:?}, not {want:?}, after {STATE_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn qemu_pid(&self) -> Option<u32> {
        self.libvirtd.guest_pid(&self.domain)
    }

    /// Whether the appliance gave the machine's MAC a lease (offered or bound).
    fn has_lease(&self) -> bool {
        let leases = self.app.api("/api/v1/leases").unwrap();
        leases
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mac"].as_str() == Some(self.mac.as_str()))
    }

    fn wait_lease(&self) -> Duration {
        let start = Instant::now();
        while !self.has_lease() {
            assert!(
                start.elapsed() < PXE_TIMEOUT,
                "the appliance saw no DHCP from {} within {PXE_TIMEOUT:?} of power-on \
                 (libvirt says {}); its log:\n{}",
                self.mac,
                self.domstate(),
                self.app.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        start.elapsed()
    }
}

/// Runs `f` in the lab's namespace on a runtime of its own.
fn in_lab<T: Send>(lab: &Lab, f: impl Future<Output = T> + Send) -> T {
    in_netns(lab.ns.name(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .unwrap()
}

/// `call` timed and printed.
async fn timed<T>(what: &str, call: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = call.await;
    let took = start.elapsed();
    eprintln!("{what}: {took:?}");
    (out, took)
}

/// The shared sequence: status, on, off, cycle from off and from on, fencing, then PXE
/// boot-once from off. Returns when the appliance saw the machine's DHCP.
async fn drive(lab: &Lab, d: &dyn PowerDriver) {
    let driver = d.name();
    assert_eq!(lab.domstate(), "shut off");
    let (s, _) = timed(&format!("{driver} status (off)"), d.status()).await;
    assert_eq!(s.unwrap(), PowerState::Off);

    let (r, _) = timed(&format!("{driver} on"), d.act(PowerAction::On)).await;
    r.unwrap();
    let took = lab.wait_domstate("running");
    eprintln!("{driver} on → libvirt running: {took:?}");
    let (s, _) = timed(&format!("{driver} status (on)"), d.status()).await;
    assert_eq!(s.unwrap(), PowerState::On);
    let powered_on = Instant::now();

    let (r, _) = timed(&format!("{driver} off"), d.act(PowerAction::Off)).await;
    r.unwrap();
    let took = lab.wait_domstate("shut off");
    eprintln!("{driver} off → libvirt shut off: {took:?}");
    assert_eq!(d.status().await.unwrap(), PowerState::Off);

    // A cycle of a machine that is off powers it on.
    let (r, _) = timed(
        &format!("{driver} cycle (from off)"),
        d.act(PowerAction::Cycle),
    )
    .await;
    r.unwrap();
    lab.wait_domstate("running");
    let before = lab.qemu_pid().expect("a running domain has a QEMU pidfile");
    // From on: off then on, so a new QEMU process.
    let (r, _) = timed(
        &format!("{driver} cycle (from on)"),
        d.act(PowerAction::Cycle),
    )
    .await;
    r.unwrap();
    lab.wait_domstate("running");
    let start = Instant::now();
    while lab.qemu_pid() == Some(before) || lab.qemu_pid().is_none() {
        assert!(
            start.elapsed() < STATE_TIMEOUT,
            "cycle did not restart QEMU (pid {before} still runs)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let restarted = Instant::now();
    assert_eq!(d.status().await.unwrap(), PowerState::On);

    // Booting from its empty disk only, the machine asks for no DHCP: wait longer than it
    // takes to PXE-boot (about 6 s from power-on), so the lease below proves pxe-once.
    std::thread::sleep(DISK_ONLY_WAIT.saturating_sub(restarted.elapsed()));
    eprintln!(
        "{driver}: disk-only boot, {:?} since the first power-on, {:?} since the cycle",
        powered_on.elapsed(),
        restarted.elapsed()
    );
    assert!(
        !lab.has_lease(),
        "the machine asked for DHCP before PXE was set: the control is broken"
    );

    let (r, _) = timed(
        &format!("{driver} fence"),
        fence(d, Duration::from_secs(30)),
    )
    .await;
    eprintln!("{driver} fence confirmed after {:?}", r.unwrap());
    assert_eq!(lab.domstate(), "shut off");

    let (r, _) = timed(&format!("{driver} pxe-once"), d.act(PowerAction::PxeOnce)).await;
    r.unwrap();
    let (r, _) = timed(&format!("{driver} on (to PXE)"), d.act(PowerAction::On)).await;
    r.unwrap();
    let took = lab.wait_lease();
    eprintln!(
        "{driver} on → the appliance's DHCP lease for {}: {took:?}",
        lab.mac
    );
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn redfish_powers_a_libvirt_domain_through_sushy_emulator_and_pxe_boots_it() {
    let lab = Lab::start("pwrf", "pwrf", "52:54:00:50:0e:01");
    let sushy =
        SushyEmulator::start(&lab.ns, 8000, &lab.libvirtd.uri(), "admin", "s3cret").unwrap();
    let settings = |url: &str, password: &str, system: Option<&str>| PowerSettings::Redfish {
        url: url.to_string(),
        username: "admin".into(),
        password: password.to_string(),
        system: system.map(str::to_string),
        insecure_tls: true,
    };
    in_lab(&lab, async {
        // By name: sushy lists systems by UUID, so the driver reads each member.
        let d = cosm_power::driver(
            &settings(sushy.url(), "s3cret", Some("pwrf")),
            mac(&lab.mac),
        );
        assert_eq!(d.name(), "redfish");
        drive(&lab, &*d).await;

        // The only system, with no name given.
        let only = cosm_power::driver(&settings(sushy.url(), "s3cret", None), mac(&lab.mac));
        assert_eq!(only.status().await.unwrap(), PowerState::On);
        // A name the BMC does not have: the error lists what it has.
        let e = cosm_power::driver(
            &settings(sushy.url(), "s3cret", Some("nope")),
            mac(&lab.mac),
        )
        .status()
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, PowerError::Failed { .. })
                && text.contains("\"nope\"")
                && text.contains("/redfish/v1/Systems/"),
            "{text}"
        );

        let (e, took) = timed(
            "redfish status, wrong password",
            cosm_power::driver(&settings(sushy.url(), "wrong", None), mac(&lab.mac)).status(),
        )
        .await;
        let e = e.unwrap_err();
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "the BMC at {} refused the credentials of user \"admin\"",
                sushy.url()
            )
        );
        assert!(took < Duration::from_secs(5), "{took:?}");

        // Nothing listens on port 9 in the lab's namespace.
        let (e, took) = timed(
            "redfish status, nothing listening",
            cosm_power::driver(
                &settings("http://127.0.0.1:9", "s3cret", None),
                mac(&lab.mac),
            )
            .status(),
        )
        .await;
        let e = e.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PowerError::Unreachable { .. }), "{text}");
        assert!(
            text.starts_with("the BMC at http://127.0.0.1:9 is unreachable")
                && text.contains("Connection refused"),
            "{text}"
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
    });
    through_the_appliance(&lab, sushy.url());
    drop(sushy);
}

/// The same BMC through the appliance, as an operator drives it: power settings set with
/// `cosmctl` (the password from the environment, never shown again), power calls through
/// `cosmctl` on the timeline, and a redeploy of a machine without a live agent that
/// PXE-boots it through its BMC (the appliance sees its DHCP again).
fn through_the_appliance(lab: &Lab, bmc_url: &str) {
    let ctl_with = |password: &str, args: &[&str]| {
        lab.app
            .command(&cosm_e2e::bin("cosmctl"))
            .args(args)
            .env("COSM_URL", lab.app.url())
            .env("COSM_TOKEN", lab.app.token())
            .env("COSM_BMC_PASSWORD", password)
            .output()
            .unwrap()
    };
    let ctl = |args: &[&str]| {
        let out = ctl_with("s3cret", args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "cosmctl {args:?}: {text}");
        text
    };
    let m = lab.mac.as_str();
    // The machine is known from its DHCP (it PXE-booted above).
    let set = [
        "machines",
        "power-settings",
        "set",
        m,
        "--driver",
        "redfish",
        "--bmc-url",
        bmc_url,
        "--username",
        "admin",
    ];
    ctl(&set);
    let shown = ctl(&["machines", "power-settings", "show", m, "--json"]);
    assert!(
        shown.contains("\"password_set\": true") && !shown.contains("s3cret"),
        "{shown}"
    );
    let off = ctl(&["machines", "power", "off", m, "--json"]);
    assert!(off.contains("\"state\": \"off\""), "{off}");
    let took = lab.wait_domstate("shut off");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let status = ctl(&["machines", "power", "status", m]);
    assert!(
        status.contains("off") && status.contains("redfish"),
        "{status}"
    );
    // A wrong password through the API: 502 naming the BMC.
    let bad = ctl_with("wrong", &set);
    assert!(bad.status.success());
    let out = lab.app.cosmctl(&["machines", "power", "status", m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refused the credentials"),
        "{err}"
    );
    ctl(&set);

    // Make it an installed machine whose agent is silent, then redeploy it.
    let path = format!("/api/v1/machines/{m}");
    lab.app
        .api_send(
            "PUT",
            &format!("{path}/role"),
            &serde_json::json!({"role": "web"}),
        )
        .unwrap();
    for state in ["deploying", "deployed"] {
        lab.app
            .api_send(
                "POST",
                &format!("{path}/state"),
                &serde_json::json!({"state": state}),
            )
            .unwrap();
    }
    let before = dhcp_events(lab, m);
    let start = std::time::Instant::now();
    ctl(&["machines", "deploy", m]);
    // PXE once, then on (it was off): it boots from the network and asks for an address.
    let deadline = start + Duration::from_secs(90);
    while dhcp_events(lab, m) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no DHCP from {m} within 90 s of the redeploy: {}",
            lab.app.api(&format!("{path}/events")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "redeploy through the BMC → DHCP from the machine: {:?}",
        start.elapsed()
    );
    let events = lab.app.api(&format!("{path}/events")).unwrap().to_string();
    for want in [
        "power settings set by",
        "power off by",
        "power pxe-once by",
        "power on by",
    ] {
        assert!(
            events.contains(want),
            "{want:?} not on the timeline: {events}"
        );
    }
    assert!(!events.contains("s3cret"), "{events}");
}

/// How many DHCP steps the machine's timeline has.
fn dhcp_events(lab: &Lab, mac: &str) -> usize {
    lab.app
        .api(&format!("/api/v1/machines/{mac}/events?limit=1000"))
        .unwrap()
        .as_array()
        .map_or(0, |a| a.iter().filter(|e| e["kind"] == "dhcp").count())
}

#[test]
fn ipmi_powers_a_libvirt_domain_through_virtualbmc_and_pxe_boots_it() {
    let lab = Lab::start("pwip", "pwip", "52:54:00:50:0e:02");
    let vbmc = VirtualBmc::start(&lab.ns).unwrap();
    vbmc.add("pwip", 6230, &lab.libvirtd.uri(), "admin", "s3cret")
        .unwrap();
    let settings = |port: u16, password: &str| PowerSettings::Ipmi {
        host: "127.0.0.1".into(),
        port,
        username: "admin".into(),
        password: password.to_string(),
    };
    in_lab(&lab, async {
        let d = cosm_power::driver(&settings(6230, "s3cret"), mac(&lab.mac));
        assert_eq!(d.name(), "ipmi");
        drive(&lab, &*d).await;

        let (e, took) = timed(
            "ipmi status, wrong password",
            cosm_power::driver(&settings(6230, "wrong"), mac(&lab.mac)).status(),
        )
        .await;
        let e = e.unwrap_err();
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "the BMC at 127.0.0.1:6230 refused the credentials of user \"admin\""
        );
        assert!(took < Duration::from_secs(5), "{took:?}");

        let (e, took) = timed(
            "ipmi status, nothing listening",
            cosm_power::driver(&settings(6299, "s3cret"), mac(&lab.mac)).status(),
        )
        .await;
        let e = e.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PowerError::Unreachable { .. }), "{text}");
        assert!(
            text.starts_with("the BMC at 127.0.0.1:6299 is unreachable: no IPMI answer"),
            "{text}"
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
    });
    drop(vbmc);
}
