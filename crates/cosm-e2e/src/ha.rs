//! Chaos for host HA (issue 13): a virtual rack of hypervisor hosts whose power is a fence
//! script of the `exec` power driver, the faults the tests inject (a host crash, a host cut
//! off from the network, the appliance cut off from every host), and what they read back:
//! evacuations, alarms, VM records and timelines, and the QEMU processes that really run,
//! counted from `/proc` per host namespace.
//!
//! The fence script ([`FENCE_SCRIPT`]) is the hosts' "BMC": powering a host off stops
//! every process of the host's network namespace (agent, libvirtd, QEMU) with SIGKILL, as
//! pulling its power would, and its status is `on` while any process is left there. It
//! logs each call, so tests can tell when a host was really off.
//!
//! Needs what the rack needs (root, libvirtd, QEMU, `make image`'s files), plus `nft` for
//! [`HaRack::isolate_appliance`] and `ping`; fails, never skips, naming what is missing.

use crate::guest::{api_console, guest_vm_request, upload_guest};
use crate::netns::{require_root_tools, run_checked, RUN_TIMEOUT};
use crate::rack::Rack;
use anyhow::{bail, Context};
use cosm_wire::{Alarm, AlarmKind, Evacuation, MacAddr, Timestamp, Vm, VmEvent};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The appliance's liveness settings in these tests: a heartbeat a second, a host lost
/// after three missed ones.
pub const HA_AGENTS: &str = "[agents]\nheartbeat_secs = 1\nmissed_beats = 3\n";

/// A guest boot under TCG on a loaded 2-core machine, with room.
pub const BOOT: Duration = Duration::from_secs(150);

/// From a fault to the evacuation's record (detection, three checks, fence): generous,
/// the lost window itself is 3 s.
pub const DETECT: Duration = Duration::from_secs(90);

/// The `exec` driver's fence command for one virtual host: `fence.sh NS [OPTION…] ACTION`.
///
/// * `status` prints `on` while `ip netns pids NS` lists any process, else `off`.
/// * `off` stops every process of the namespace with SIGKILL, again until none is left
///   (bounded: 10 s), as a hard power-off would. Options: `off-fails` (it exits 1, as a BMC
///   that refuses), `off-delay=SECS` (it sleeps first, as a slow BMC).
/// * `on` (and anything else) exits 1: powering a namespace back on is not supported.
///
/// Each call appends `UPTIME NS MAC ACTION start|ok|failed` to `fence.log` next to the
/// script; UPTIME is `/proc/uptime`'s first field, the clock `/proc/PID/stat` start times
/// are counted in, so a QEMU's start can be compared with the fence's end.
pub const FENCE_SCRIPT: &str = r#"#!/bin/sh
set -u
ns=$1
shift
action=""
fails=0
delay=0
for a in "$@"; do
  case "$a" in
    off-fails) fails=1 ;;
    off-delay=*) delay=${a#off-delay=} ;;
    *) action=$a ;;
  esac
done
log=$(dirname "$0")/fence.log
say() { echo "$(cut -d' ' -f1 /proc/uptime) $ns ${COSM_MACHINE_MAC:-?} $action $1" >>"$log"; }
say start
case "$action" in
  status)
    pids=$(ip netns pids "$ns") || { say failed; exit 1; }
    if [ -n "$pids" ]; then echo on; else echo off; fi
    say ok
    ;;
  off)
    if [ "$fails" = 1 ]; then say failed; echo "the BMC refuses (test: off-fails)" >&2; exit 1; fi
    sleep "$delay"
    end=$(( $(date +%s) + 10 ))
    while :; do
      pids=$(ip netns pids "$ns") || { say failed; exit 1; }
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086 # one PID a word
      kill -9 $pids 2>/dev/null
      if [ "$(date +%s)" -ge "$end" ]; then say failed; echo "processes left: $pids" >&2; exit 1; fi
      sleep 0.1
    done
    say ok
    ;;
  *)
    say failed
    echo "$action is not supported by the test fence" >&2
    exit 1
    ;;
esac
"#;

/// How a host's fence behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// `off` kills every process of the host's namespace.
    Kills,
    /// `off` exits 1.
    OffFails,
    /// `off` sleeps this many seconds, then kills.
    SlowOff(u32),
}

/// One line of the fence log.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceCall {
    /// Seconds since boot (`/proc/uptime`).
    pub uptime: f64,
    pub ns: String,
    pub mac: String,
    pub action: String,
    /// `start`, `ok` or `failed`.
    pub event: String,
}

/// A QEMU process found in `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qemu {
    pub pid: u32,
    /// Its guest's name (`-name guest=NAME,…`).
    pub vm: String,
    /// The index of the rack host whose namespace it runs in; `None` outside every host.
    pub host: Option<usize>,
    /// When it started, in seconds since boot.
    pub started: f64,
}

/// A rack with hosts whose power is the fence script, and the guest images uploaded.
#[derive(Debug)]
pub struct HaRack {
    // Field order is drop order: the rack (hosts, appliance) before the script's directory.
    pub rack: Rack,
    dir: tempfile::TempDir,
}

impl HaRack {
    /// A rack named `prefix…` with `hosts` active VM hosts reporting (liveness from
    /// [`HA_AGENTS`]), the test guest uploaded, and the fence script written. Power
    /// settings are set per host with [`HaRack::set_fence`].
    pub fn start(prefix: &str, hosts: u8) -> anyhow::Result<HaRack> {
        crate::libvirtd::require_libvirtd()?;
        let dir = tempfile::Builder::new().prefix("cosm-ha").tempdir()?;
        let script = dir.path().join("fence.sh");
        std::fs::write(&script, FENCE_SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let mut rack = Rack::start(prefix, HA_AGENTS)?;
        rack.start_hosts(hosts, Duration::from_secs(120))?;
        rack.wait_hosts_reporting(hosts.into(), Duration::from_secs(60))?;
        upload_guest(&rack)?;
        let ha = HaRack { rack, dir };
        // A heartbeat a second is tight on a loaded 2-core machine: a host may be `lost`
        // for a moment right after it enrolled. The tests start from every host active.
        for h in 0..ha.rack.hosts.len() {
            wait_for(
                Duration::from_secs(60),
                &format!("host {} active", h + 1),
                || Ok((ha.machine_state(h)? == "active").then_some(())),
            )?;
        }
        Ok(ha)
    }

    pub fn fence_script(&self) -> PathBuf {
        self.dir.path().join("fence.sh")
    }

    /// Host `host`'s power settings: the fence script on its namespace.
    pub fn set_fence(&self, host: usize, fence: Fence) -> anyhow::Result<()> {
        let h = &self.rack.hosts[host];
        let mut command = vec![
            self.fence_script().to_string_lossy().into_owned(),
            h.ns.name().to_string(),
        ];
        match fence {
            Fence::Kills => {}
            Fence::OffFails => command.push("off-fails".into()),
            Fence::SlowOff(secs) => command.push(format!("off-delay={secs}")),
        }
        self.rack.app.api_send(
            "PUT",
            &format!("/api/v1/machines/{}/power-settings", h.mac),
            &serde_json::json!({"driver": "exec", "command": command, "timeout_secs": 30}),
        )?;
        Ok(())
    }

    /// [`HaRack::set_fence`] for every host.
    pub fn set_fence_all(&self, fence: Fence) -> anyhow::Result<()> {
        (0..self.rack.hosts.len()).try_for_each(|h| self.set_fence(h, fence))
    }

    /// Every call of the fence script so far, oldest first.
    pub fn fence_log(&self) -> Vec<FenceCall> {
        std::fs::read_to_string(self.dir.path().join("fence.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5).then(|| FenceCall {
                    uptime: f[0].parse().unwrap_or(0.0),
                    ns: f[1].into(),
                    mac: f[2].into(),
                    action: f[3].into(),
                    event: f[4].into(),
                })
            })
            .collect()
    }

    /// Creates test guest `name` (128 MiB) on host `host`, HA or not.
    pub fn create_vm(&self, name: &str, ha: bool, host: usize) -> anyhow::Result<()> {
        let mut body = guest_vm_request(name, 128);
        body["ha"] = serde_json::json!(ha);
        body["host"] = serde_json::json!(self.rack.hosts[host].mac);
        // Setting up, not under test: a host that is `lost` for a moment (a heartbeat late
        // on a loaded machine) refuses VMs with `no_host`; it comes back within seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let v = loop {
            match self.rack.app.api_send("POST", "/api/v1/vms", &body) {
                Err(e) if e.to_string().contains("no_host") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                r => break r?,
            }
        };
        if v["host"] != self.rack.hosts[host].mac.as_str() {
            bail!("{name} was placed elsewhere than asked: {v}");
        }
        Ok(())
    }

    /// Waits until each VM is `running` with its first boot line on its console.
    pub fn wait_booted(&self, names: &[&str]) -> anyhow::Result<()> {
        for name in names {
            crate::guest::wait_vm(&self.rack.app, name, "running", BOOT, |v| {
                v["state"] == "running"
            })?;
            wait_for(BOOT, &format!("{name}'s first boot line"), || {
                let c = api_console(&self.rack.app, name)?;
                Ok(c.boots
                    .iter()
                    .any(|(m, n)| m == name && *n == 1)
                    .then_some(()))
            })?;
        }
        Ok(())
    }

    /// A host crash: every process of its namespace (agent, libvirtd, QEMU) SIGKILLed, by
    /// PID, until none is left. Returns when it happened.
    pub fn crash_host(&self, host: usize) -> anyhow::Result<SystemTime> {
        let ns = &self.rack.hosts[host].ns;
        let at = SystemTime::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = ns.pids()?;
            if pids.is_empty() {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!("processes {pids:?} of {} survived SIGKILL", ns.name());
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts a host off: its veth on the rack's side (`hv<n>`) down. Its processes go on.
    pub fn cut_host(&self, host: usize) -> anyhow::Result<SystemTime> {
        let n = self.rack.hosts[host].n;
        let mut c = self.rack.ns.command("ip");
        c.args(["link", "set", &format!("hv{n}"), "down"]);
        let at = SystemTime::now();
        self.rack.ns.run_ok(c)?;
        Ok(at)
    }

    /// Cuts the appliance off from every host while the hosts still reach each other: an
    /// nftables table in the rack's namespace drops every IP packet the rack namespace's
    /// own stack receives from, or sends to, the bridge `br0` (where 192.0.2.1 lives).
    /// Frames the bridge forwards between the hosts' veths never reach the input/output
    /// hooks, so host-to-host traffic (peer probes, migrations) goes on; the tests' API
    /// calls from inside the rack namespace go over `lo` and are not dropped either.
    pub fn isolate_appliance(&self) -> anyhow::Result<SystemTime> {
        require_root_tools(&["nft"]);
        let at = SystemTime::now();
        for rule in [
            "add table inet cosm_chaos",
            "add chain inet cosm_chaos input { type filter hook input priority -300 ; }",
            "add chain inet cosm_chaos output { type filter hook output priority -300 ; }",
            "add rule inet cosm_chaos input iifname \"br0\" drop",
            "add rule inet cosm_chaos output oifname \"br0\" drop",
        ] {
            let mut c = self.rack.ns.command("nft");
            c.arg(rule);
            self.rack.ns.run_ok(c)?;
        }
        Ok(at)
    }

    /// Undoes [`HaRack::isolate_appliance`].
    pub fn heal_appliance(&self) -> anyhow::Result<()> {
        let mut c = self.rack.ns.command("nft");
        c.args(["delete", "table", "inet", "cosm_chaos"]);
        self.rack.ns.run_ok(c).map(|_| ())
    }

    /// Whether `ping` from host `from`'s namespace gets an answer from `to` within 2 s.
    pub fn ping(&self, from: usize, to: std::net::Ipv4Addr) -> anyhow::Result<bool> {
        require_root_tools(&["ping"]);
        let mut c = self.rack.hosts[from].ns.command("ping");
        c.args(["-c", "1", "-W", "2", &to.to_string()]);
        Ok(self.rack.hosts[from].ns.run(c)?.status.success())
    }

    /// `GET /api/v1/evacuations`, newest first.
    pub fn evacuations(&self) -> anyhow::Result<Vec<Evacuation>> {
        let v = self.rack.app.api("/api/v1/evacuations")?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("/api/v1/evacuations is not a list of Evacuation: {v}"))
    }

    /// The newest evacuation of host `host`, if any.
    pub fn evacuation_of(&self, host: usize) -> anyhow::Result<Option<Evacuation>> {
        let mac = self.mac(host);
        Ok(self.evacuations()?.into_iter().find(|e| e.host == mac))
    }

    /// The active alarms, or every alarm ever raised with `all`.
    pub fn alarms(&self, all: bool) -> anyhow::Result<Vec<Alarm>> {
        let path = if all {
            "/api/v1/alarms?all=true"
        } else {
            "/api/v1/alarms"
        };
        let v = self.rack.app.api(path)?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("{path} is not a list of Alarm: {v}"))
    }

    /// Waits until an alarm of `kind` about `subject` is active, and returns it.
    pub fn wait_alarm(
        &self,
        kind: AlarmKind,
        subject: &str,
        timeout: Duration,
    ) -> anyhow::Result<Alarm> {
        wait_for(
            timeout,
            &format!("alarm {} on {subject}", kind.as_str()),
            || {
                Ok(self
                    .alarms(false)?
                    .into_iter()
                    .find(|a| a.kind == kind && a.subject == subject && a.cleared_at.is_none()))
            },
        )
        .with_context(|| format!("every alarm: {:?}", self.alarms(true)))
    }

    /// The value of `cosm_alarms_active{kind="KIND",…}` on `/metrics` (summed over
    /// severities), 0 when absent.
    pub fn alarms_active_metric(&self, kind: AlarmKind) -> anyhow::Result<f64> {
        let text = self.rack.app.metrics()?;
        let label = format!("kind=\"{}\"", kind.as_str());
        Ok(text
            .lines()
            .filter(|l| l.starts_with("cosm_alarms_active{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub fn vm(&self, name: &str) -> anyhow::Result<Vm> {
        let v = self.rack.app.api(&format!("/api/v1/vms/{name}"))?;
        serde_json::from_value(v.clone()).with_context(|| format!("{name} is not a Vm: {v}"))
    }

    /// A VM's timeline, oldest first.
    pub fn vm_events(&self, name: &str) -> anyhow::Result<Vec<VmEvent>> {
        let v = self.rack.app.api(&format!("/api/v1/vms/{name}/events"))?;
        let mut events: Vec<VmEvent> = serde_json::from_value(v.clone())
            .with_context(|| format!("{name}'s events are not VmEvents: {v}"))?;
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    /// A machine's `state` as the API shows it.
    pub fn machine_state(&self, host: usize) -> anyhow::Result<String> {
        let mac = &self.rack.hosts[host].mac;
        let v = self.rack.app.api(&format!("/api/v1/machines/{mac}"))?;
        v["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("machine {mac} has no state: {v}"))
    }

    pub fn mac(&self, host: usize) -> MacAddr {
        self.rack.hosts[host]
            .mac
            .parse()
            .expect("rack hosts have valid MACs")
    }

    /// The index of the host with this MAC.
    pub fn host_of(&self, mac: &MacAddr) -> Option<usize> {
        (0..self.rack.hosts.len()).find(|&h| self.mac(h) == *mac)
    }

    /// Every QEMU process running a guest (`-name guest=NAME,…`) on this machine, with
    /// the rack host whose namespace it is in.
    pub fn qemus(&self) -> Vec<Qemu> {
        let hosts: Vec<Option<(u64, u64)>> = self
            .rack
            .hosts
            .iter()
            .map(|h| netns_id(&format!("/run/netns/{}", h.ns.name())))
            .collect();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            // A zombie's cmdline is empty: it runs nothing.
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first().is_some_and(|a| a.contains("qemu")) {
                continue;
            }
            let Some(vm) = args.iter().find_map(|a| {
                a.strip_prefix("guest=")
                    .map(|rest| rest.split(',').next().unwrap_or_default().to_string())
            }) else {
                continue;
            };
            let ns = netns_id(&format!("/proc/{pid}/ns/net"));
            let host = hosts.iter().position(|h| h.is_some() && *h == ns);
            found.push(Qemu {
                pid,
                vm,
                host,
                started: start_uptime(pid).unwrap_or(f64::NAN),
            });
        }
        found
    }

    /// The QEMU processes running guest `name`.
    pub fn qemus_of(&self, name: &str) -> Vec<Qemu> {
        self.qemus().into_iter().filter(|q| q.vm == name).collect()
    }

    /// The rack's appliance log and each host's agent log, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = format!(
            "appliance log (tail):\n{}\n",
            tail(&self.rack.app.log_text(), 60)
        );
        for h in &self.rack.hosts {
            s += &format!(
                "agent of host {} ({}) (tail):\n{}\n",
                h.n,
                h.mac,
                tail(&h.agent_log(), 20)
            );
        }
        s += &format!("fence log: {:?}\n", self.fence_log());
        s
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The identity (device, inode) of a network namespace file.
fn netns_id(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// When process `pid` started, in seconds since boot (`/proc/PID/stat` field 22).
fn start_uptime(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Field 3 (state) is the first after the command's closing parenthesis.
    let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks / clock_ticks())
}

/// `getconf CLK_TCK`: the unit of `/proc/PID/stat` times (100 on Linux everywhere known).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        run_checked(
            {
                let mut c = Command::new("getconf");
                c.arg("CLK_TCK");
                c
            },
            RUN_TIMEOUT,
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
    })
}

/// Polls `f` every 250 ms until it answers `Some`, for at most `timeout`; an error of `f`
/// ends the wait at once.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Seconds from `from` to an appliance timestamp (negative if it is earlier).
pub fn secs_since(from: SystemTime, at: Timestamp) -> f64 {
    let from_ms = from
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0);
    (at.as_millis() as f64 - from_ms) / 1000.0
}
