//! Host HA under chaos (issue 13), each test on three hypervisor hosts of its own virtual
//! rack (namespaces with their own libvirtd and a real `cosm-agent`) with real QEMU TCG
//! guests: 2 HA VMs and 1 that is not.
//!
//! The appliance declares a host dead only when its heartbeats stopped, its peers cannot
//! reach it and its BMC answers; then it fences it and only then restarts its HA VMs
//! elsewhere, from their disks on the shared VM storage. The hosts' "BMC" here is the
//! `exec` power driver running [`FENCE_SCRIPT`]: fencing stops every process of the host's
//! namespace (agent, libvirtd, QEMU), as pulling its power would. Each test prints its
//! detection, fence and restart times, measured from the fault.
//!
//! * a host crash (every process of its namespace killed): fenced, its HA VMs running once
//!   each on the survivors with a new boot line from their disks, the other one `failed`;
//! * a host cut off (its link down, its processes alive): fenced before anything starts
//!   elsewhere, then every VM runs exactly once (QEMU processes counted in `/proc`);
//! * a fence that fails: nothing restarts, alarm `fence_failed`;
//! * the appliance cut off from every host: nobody fenced, alarm `appliance_isolated`,
//!   everything back to normal once healed;
//! * the appliance SIGKILLed in the middle of an evacuation: it finishes after a restart.
//!
//! Needs root, libvirtd (libvirt-daemon-system), QEMU, qemu-img, nft (nftables), ping and
//! `make image`'s files; fails, never skips, naming what is missing.

use cosm_e2e::guest::{api_console, wait_console};
use cosm_e2e::ha::{secs_since, wait_for, Fence, HaRack, BOOT, DETECT, FENCE_SCRIPT};
use cosm_wire::{AlarmKind, EvacuatedVmStatus, Evacuation, EvacuationPhase, VmName, VmState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

/// The host every test breaks (index in `rack.hosts`: host number 1, 192.0.2.11).
const VICTIM: usize = 0;

/// Unwraps, or panics with the error and the rack's logs.
fn ok<T>(ha: &HaRack, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\nevacuations: {:?}\n{}", ha.evacuations(), ha.logs()))
}

/// Asserts that guest `name` runs as exactly one QEMU process, on host `host`.
fn assert_runs_once_on(ha: &HaRack, name: &str, host: usize) {
    let q = ha.qemus_of(name);
    assert!(
        q.len() == 1 && q[0].host == Some(host),
        "{name} must run exactly once, on host {}: its QEMU processes are {q:?}",
        ha.rack.hosts[host].n
    );
}

/// Waits until each of `names` is `running` on a host other than `victim`; returns, per
/// VM, that host and when it was first seen so after `since`.
fn wait_restarted(
    ha: &HaRack,
    names: &[&str],
    victim: usize,
    since: Instant,
) -> BTreeMap<String, (usize, Duration)> {
    let mut seen = BTreeMap::new();
    let timeout = DETECT + BOOT;
    let deadline = Instant::now() + timeout;
    while seen.len() < names.len() {
        for name in names {
            if seen.contains_key(*name) {
                continue;
            }
            let vm = ok(ha, ha.vm(name));
            let elsewhere = vm
                .host
                .as_ref()
                .and_then(|m| ha.host_of(m))
                .filter(|&h| h != victim);
            if let (VmState::Running, Some(h)) = (vm.state, elsewhere) {
                seen.insert(name.to_string(), (h, since.elapsed()));
            }
        }
        if Instant::now() > deadline {
            let records: Vec<_> = names
                .iter()
                .map(|n| ha.vm(n).map(|v| format!("{v:?}")))
                .collect();
            panic!(
                "not every one of {names:?} ran elsewhere within {timeout:?} (seen: {seen:?})\nrecords: {records:?}\nevacuations: {:?}\n{}",
                ha.evacuations(),
                ha.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    seen
}

/// Waits until host `host`'s newest evacuation satisfies `done`.
fn wait_evacuation(
    ha: &HaRack,
    host: usize,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Evacuation) -> bool,
) -> Evacuation {
    ok(
        ha,
        wait_for(timeout, what, || {
            Ok(ha.evacuation_of(host)?.filter(|e| done(e)))
        }),
    )
}

/// Checks the record of a finished evacuation of `VICTIM`: fenced, then done, each HA VM
/// `running` where it now runs, each other `not_ha`.
fn assert_evacuation_done(
    ha: &HaRack,
    e: &Evacuation,
    moved: &BTreeMap<String, (usize, Duration)>,
    not_ha: &[&str],
) {
    assert_eq!(e.phase, EvacuationPhase::Done, "{e:?}");
    let fenced = e.fenced_at.unwrap_or_else(|| panic!("no fenced_at: {e:?}"));
    let finished = e
        .finished_at
        .unwrap_or_else(|| panic!("no finished_at: {e:?}"));
    assert!(e.started_at <= fenced && fenced <= finished, "{e:?}");
    for (name, (host, _)) in moved {
        let v = e.vms.iter().find(|v| v.name.as_str() == name);
        assert!(
            v.is_some_and(
                |v| v.status == EvacuatedVmStatus::Running && v.to.as_ref() == Some(&ha.mac(*host))
            ),
            "{name} is not `running` on host {} in the evacuation: {e:?}",
            ha.rack.hosts[*host].n
        );
    }
    for name in not_ha {
        assert!(
            e.vms
                .iter()
                .any(|v| v.name.as_str() == *name && v.status == EvacuatedVmStatus::NotHa),
            "{name} is not `not_ha` in the evacuation: {e:?}"
        );
    }
}

/// Checks that a VM that is not HA went down with its host and stays down, reported.
fn assert_stays_down(ha: &HaRack, name: &str) {
    let vm = ok(ha, ha.vm(name));
    assert_eq!(vm.state, VmState::Failed, "{vm:?}");
    let message = vm.message.clone().unwrap_or_default();
    assert!(
        message
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == "HA"),
        "{name}'s message does not say it is not HA: {vm:?}"
    );
    assert!(
        ha.qemus_of(name).is_empty(),
        "{name} is not HA but runs: {:?}",
        ha.qemus_of(name)
    );
    ok(
        ha,
        ha.wait_alarm(AlarmKind::VmDown, name, Duration::from_secs(30)),
    );
}

/// Asserts the survivor's own libvirt runs the guest and its console shows a boot from
/// the disk it had (the boot counter on it says `boot=2`).
fn assert_booted_again_on(ha: &HaRack, name: &str, host: usize) {
    let hv = ok(ha, ha.rack.hosts[host].libvirtd.connect());
    let vm = VmName::new(name).unwrap();
    ok(
        ha,
        wait_console(&hv, &vm, BOOT, "a second boot from its disk", |c| {
            c.boots.iter().any(|(m, n)| m == name && *n == 2)
        })
        .map(|_| ()),
    );
    ok(
        ha,
        wait_for(BOOT, &format!("{name}'s boot=2 on the API console"), || {
            let c = api_console(&ha.rack.app, name)?;
            Ok(c.boots
                .iter()
                .any(|(m, n)| m == name && *n == 2)
                .then_some(()))
        }),
    );
}

fn print_times(
    scenario: &str,
    fault: SystemTime,
    e: &Evacuation,
    moved: &BTreeMap<String, (usize, Duration)>,
) {
    eprintln!(
        "[{scenario}] detection (evacuation started) {:.1} s, fenced {:.1} s after the fault",
        secs_since(fault, e.started_at),
        e.fenced_at.map_or(f64::NAN, |t| secs_since(fault, t))
    );
    for (name, (host, took)) in moved {
        eprintln!(
            "[{scenario}] {name} running on host {} {:.1} s after the fault",
            host + 1,
            took.as_secs_f64()
        );
    }
}

#[test]
fn a_crashed_host_is_fenced_and_its_ha_vms_restart_on_the_survivors() {
    let ha = HaRack::start("ha1", 3).unwrap();
    // The fence of each host stops every process of its namespace (FENCE_SCRIPT); here
    // they are all dead already, so its status says `off`.
    ok(&ha, ha.set_fence_all(Fence::Kills));
    let (a, b, c) = ("ha1-a", "ha1-b", "ha1-c");
    for (name, is_ha) in [(a, true), (b, true), (c, false)] {
        ok(&ha, ha.create_vm(name, is_ha, VICTIM));
    }
    ok(&ha, ha.wait_booted(&[a, b, c]));
    for name in [a, b, c] {
        assert_runs_once_on(&ha, name, VICTIM);
    }

    let fault = ok(&ha, ha.crash_host(VICTIM));
    let t0 = Instant::now();
    let moved = wait_restarted(&ha, &[a, b], VICTIM, t0);
    let e = wait_evacuation(
        &ha,
        VICTIM,
        "the evacuation done",
        Duration::from_secs(60),
        |e| e.phase == EvacuationPhase::Done,
    );
    print_times("host crash", fault, &e, &moved);
    assert_evacuation_done(&ha, &e, &moved, &[c]);
    assert_eq!(ok(&ha, ha.machine_state(VICTIM)), "fenced");
    for (name, (host, _)) in &moved {
        assert_booted_again_on(&ha, name, *host);
        assert_runs_once_on(&ha, name, *host);
    }
    assert_stays_down(&ha, c);

    let mac = ha.rack.hosts[VICTIM].mac.clone();
    let all = ok(&ha, ha.alarms(true));
    for kind in [AlarmKind::HostLost, AlarmKind::HostFenced] {
        assert!(
            all.iter().any(|x| x.kind == kind && x.subject == mac),
            "no {} alarm on {mac}: {all:?}",
            kind.as_str()
        );
    }
    assert!(
        ok(&ha, ha.alarms_active_metric(AlarmKind::VmDown)) >= 1.0,
        "/metrics does not count the active vm_down alarm:\n{}",
        ha.rack.app.metrics().unwrap_or_default()
    );
    // Only the dead host was fenced; the survivors are still active VM hosts.
    let victim_ns = ha.rack.hosts[VICTIM].ns.name().to_string();
    let offs: Vec<_> = ha
        .fence_log()
        .into_iter()
        .filter(|f| f.action == "off")
        .collect();
    assert!(offs.iter().all(|f| f.ns == victim_ns), "{offs:?}");
    for h in 1..3 {
        assert_eq!(ok(&ha, ha.machine_state(h)), "active");
    }
}

#[test]
fn a_host_cut_off_is_fenced_before_its_vms_run_elsewhere_and_each_vm_runs_once() {
    let ha = HaRack::start("ha2", 3).unwrap();
    // Fencing stops every process of the host's namespace (FENCE_SCRIPT).
    ok(&ha, ha.set_fence_all(Fence::Kills));
    let (a, b, c) = ("ha2-a", "ha2-b", "ha2-c");
    ok(&ha, ha.create_vm(a, true, VICTIM));
    ok(&ha, ha.create_vm(b, true, VICTIM));
    // Not HA, on a survivor: untouched by all of it.
    ok(&ha, ha.create_vm(c, false, 1));
    ok(&ha, ha.wait_booted(&[a, b, c]));

    // Its link down: the agent, libvirtd and the guests go on, cut off from everyone.
    let fault = ok(&ha, ha.cut_host(VICTIM));
    let t0 = Instant::now();
    let moved = wait_restarted(&ha, &[a, b], VICTIM, t0);
    let e = wait_evacuation(
        &ha,
        VICTIM,
        "the evacuation done",
        Duration::from_secs(60),
        |e| e.phase == EvacuationPhase::Done,
    );
    print_times("host cut off", fault, &e, &moved);
    assert_evacuation_done(&ha, &e, &moved, &[]);
    assert_eq!(ok(&ha, ha.machine_state(VICTIM)), "fenced");

    // Fenced before anything started elsewhere, by the fence's own clock and by the
    // appliance's: the powered-off confirmation (the script's `off … ok`) precedes each
    // new QEMU's start, and fenced_at precedes every step of the VM on its new host.
    let victim_ns = ha.rack.hosts[VICTIM].ns.name().to_string();
    let log = ha.fence_log();
    let off_done = log
        .iter()
        .find(|f| f.ns == victim_ns && f.action == "off" && f.event == "ok")
        .unwrap_or_else(|| panic!("the host was never powered off: {log:?}"))
        .uptime;
    let fenced_at = e.fenced_at.unwrap();
    for (name, (host, _)) in &moved {
        let q = ha.qemus_of(name);
        assert!(
            q.iter().all(|q| q.started > off_done),
            "{name} started (uptime {:?}) before its old host was off (uptime {off_done})",
            q.iter().map(|q| q.started).collect::<Vec<_>>()
        );
        let events = ok(&ha, ha.vm_events(name));
        let there: Vec<_> = events
            .iter()
            .filter(|ev| ev.host.as_ref() == Some(&ha.mac(*host)))
            .collect();
        assert!(
            there.iter().any(|ev| ev.to_state == Some(VmState::Running)),
            "{name}'s timeline has no start on its new host: {events:?}"
        );
        assert!(
            there.iter().all(|ev| ev.at >= fenced_at),
            "{name} moved before its host was fenced ({fenced_at}): {there:?}"
        );
        assert_booted_again_on(&ha, name, *host);
    }
    // Nothing is left on the fenced host, and each VM runs exactly once.
    assert_eq!(ok(&ha, ha.rack.hosts[VICTIM].ns.pids()), Vec::<u32>::new());
    for (name, (host, _)) in &moved {
        assert_runs_once_on(&ha, name, *host);
    }
    assert_runs_once_on(&ha, c, 1);
    let vc = ok(&ha, ha.vm(c));
    assert_eq!(vc.state, VmState::Running, "{vc:?}");
    let console = ok(&ha, api_console(&ha.rack.app, c));
    assert!(
        !console.boots.iter().any(|(_, n)| *n > 1),
        "{c} booted again: {console:?}"
    );
}

#[test]
fn a_failed_fence_restarts_nothing() {
    let ha = HaRack::start("ha3", 3).unwrap();
    // The BMC refuses `off` (exit 1); its status is true: the host is on.
    ok(&ha, ha.set_fence_all(Fence::OffFails));
    let (a, b, c) = ("ha3-a", "ha3-b", "ha3-c");
    for (name, is_ha) in [(a, true), (b, true), (c, false)] {
        ok(&ha, ha.create_vm(name, is_ha, VICTIM));
    }
    ok(&ha, ha.wait_booted(&[a, b, c]));

    let fault = ok(&ha, ha.cut_host(VICTIM));
    let e = wait_evacuation(&ha, VICTIM, "phase fence_failed", DETECT, |e| {
        e.phase == EvacuationPhase::FenceFailed
    });
    eprintln!(
        "[fence fails] detection (evacuation started) {:.1} s, fence_failed seen {:.1} s after the fault",
        secs_since(fault, e.started_at),
        fault.elapsed().unwrap_or_default().as_secs_f64()
    );
    assert!(e.error.is_some(), "fence_failed without an error: {e:?}");
    let mac = ha.rack.hosts[VICTIM].mac.clone();
    ok(
        &ha,
        ha.wait_alarm(AlarmKind::FenceFailed, &mac, Duration::from_secs(30)),
    );

    // A bounded look: for 15 s nothing moves and nothing starts elsewhere, while the
    // cut-off host still runs every guest.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let e = ok(&ha, ha.evacuation_of(VICTIM)).expect("the evacuation record went away");
        assert!(
            matches!(
                e.phase,
                EvacuationPhase::FenceFailed | EvacuationPhase::Fencing
            ) && e.fenced_at.is_none(),
            "{e:?}"
        );
        assert!(
            e.vms.iter().all(|v| !matches!(
                v.status,
                EvacuatedVmStatus::Placed | EvacuatedVmStatus::Running
            )),
            "a VM was placed although the fence failed: {e:?}"
        );
        for name in [a, b, c] {
            let vm = ok(&ha, ha.vm(name));
            assert_eq!(
                vm.host.as_ref().map(|m| m.to_string()),
                Some(mac.clone()),
                "{name} left its unfenced host: {vm:?}"
            );
            assert_runs_once_on(&ha, name, VICTIM);
        }
        assert_ne!(ok(&ha, ha.machine_state(VICTIM)), "fenced");
        std::thread::sleep(Duration::from_secs(1));
    }
    let victim_ns = ha.rack.hosts[VICTIM].ns.name().to_string();
    let log = ha.fence_log();
    assert!(
        log.iter()
            .any(|f| f.ns == victim_ns && f.action == "off" && f.event == "failed"),
        "the appliance never tried to power the host off: {log:?}"
    );
    assert!(
        ok(&ha, ha.alarms_active_metric(AlarmKind::FenceFailed)) >= 1.0,
        "/metrics does not count the fence_failed alarm:\n{}",
        ha.rack.app.metrics().unwrap_or_default()
    );
}

#[test]
fn the_appliance_cut_off_from_every_host_fences_nobody() {
    let ha = HaRack::start("ha4", 3).unwrap();
    // Fencing would stop every process of a host's namespace (FENCE_SCRIPT): a wrong
    // fence here would show as guests gone.
    ok(&ha, ha.set_fence_all(Fence::Kills));
    let (a, b, c) = ("ha4-a", "ha4-b", "ha4-c");
    ok(&ha, ha.create_vm(a, true, 0));
    ok(&ha, ha.create_vm(b, true, 1));
    ok(&ha, ha.create_vm(c, false, 2));
    ok(&ha, ha.wait_booted(&[a, b, c]));
    let qemus = |ha: &HaRack| -> BTreeSet<(String, u32, Option<usize>)> {
        ha.qemus()
            .into_iter()
            .filter(|q| [a, b, c].contains(&q.vm.as_str()))
            .map(|q| (q.vm, q.pid, q.host))
            .collect()
    };
    let before = qemus(&ha);
    for (i, name) in [a, b, c].into_iter().enumerate() {
        assert_runs_once_on(&ha, name, i);
    }
    let peer = ha.rack.hosts[1].addr;
    assert!(
        ok(&ha, ha.ping(0, peer)),
        "hosts 1 and 2 do not reach each other"
    );

    // The cut: an nftables rule set in the rack's namespace drops every packet between the
    // appliance's stack and the bridge (see HaRack::isolate_appliance); the bridge itself
    // still forwards between the hosts.
    let fault = ok(&ha, ha.isolate_appliance());
    let t0 = Instant::now();
    assert!(
        !ok(&ha, ha.ping(0, "192.0.2.1".parse().unwrap())),
        "the appliance is still reachable from host 1"
    );
    assert!(
        ok(&ha, ha.ping(0, peer)),
        "the cut also cut host 1 off host 2"
    );
    let alarm = ok(
        &ha,
        wait_for(Duration::from_secs(60), "alarm appliance_isolated", || {
            Ok(ha
                .alarms(false)?
                .into_iter()
                .find(|x| x.kind == AlarmKind::ApplianceIsolated))
        }),
    );
    eprintln!(
        "[appliance cut off] appliance_isolated raised {:.1} s after the cut",
        secs_since(fault, alarm.raised_at)
    );
    // The lost window is 3 s; hold the cut for 20 s, looking all along.
    let check_nothing_fenced = |ha: &HaRack, when: &str| {
        let evacuations = ok(ha, ha.evacuations());
        assert!(evacuations.is_empty(), "{when}: {evacuations:?}");
        for h in 0..3 {
            assert_ne!(
                ok(ha, ha.machine_state(h)),
                "fenced",
                "{when}: host {}",
                h + 1
            );
        }
        let now = qemus(ha);
        assert_eq!(now, before, "{when}: the guests' QEMU processes changed");
        let log = ha.fence_log();
        assert!(
            log.iter().all(|f| f.action != "off"),
            "{when}: a host was powered off: {log:?}"
        );
    };
    while t0.elapsed() < Duration::from_secs(20) {
        check_nothing_fenced(&ha, "during the cut");
        std::thread::sleep(Duration::from_secs(1));
    }
    let counters: BTreeMap<&str, u64> = [a, b, c]
        .into_iter()
        .map(|n| {
            let c = ok(&ha, api_console(&ha.rack.app, n));
            (n, c.last_counter().unwrap_or(0))
        })
        .collect();

    ok(&ha, ha.heal_appliance());
    let healed = Instant::now();
    // Back to normal: the alarm clears and the agents report again (each guest's console,
    // as the appliance shows it, goes on counting past what it showed during the cut).
    ok(
        &ha,
        wait_for(
            Duration::from_secs(60),
            "appliance_isolated cleared",
            || {
                Ok((!ha
                    .alarms(false)?
                    .iter()
                    .any(|x| x.kind == AlarmKind::ApplianceIsolated))
                .then_some(()))
            },
        ),
    );
    eprintln!(
        "[appliance cut off] appliance_isolated cleared {:.1} s after the heal",
        healed.elapsed().as_secs_f64()
    );
    for (name, last) in &counters {
        ok(
            &ha,
            wait_for(
                Duration::from_secs(60),
                &format!("{name} reported again"),
                || {
                    let c = api_console(&ha.rack.app, name)?;
                    Ok((c.last_counter() > Some(*last)).then_some(()))
                },
            ),
        );
    }
    // No fence later either.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        check_nothing_fenced(&ha, "after the heal");
        std::thread::sleep(Duration::from_secs(1));
    }
    for name in [a, b, c] {
        let vm = ok(&ha, ha.vm(name));
        assert_eq!(vm.state, VmState::Running, "{vm:?}");
    }
    for h in 0..3 {
        assert_eq!(ok(&ha, ha.machine_state(h)), "active");
    }
}

#[test]
fn an_appliance_killed_mid_evacuation_finishes_it_after_a_restart() {
    let mut ha = HaRack::start("ha5", 3).unwrap();
    // Fencing stops every process of the host's namespace (FENCE_SCRIPT), 3 s after it
    // is asked: the window in which the appliance is killed.
    ok(&ha, ha.set_fence_all(Fence::SlowOff(3)));
    let (a, b, c) = ("ha5-a", "ha5-b", "ha5-c");
    for (name, is_ha) in [(a, true), (b, true), (c, false)] {
        ok(&ha, ha.create_vm(name, is_ha, VICTIM));
    }
    ok(&ha, ha.wait_booted(&[a, b, c]));

    // Cut off rather than crashed: its power is on, so the fence has to power it off.
    let fault = ok(&ha, ha.cut_host(VICTIM));
    let t0 = Instant::now();
    let caught = wait_evacuation(&ha, VICTIM, "the evacuation under way", DETECT, |e| {
        e.phase == EvacuationPhase::Fencing
            || e.vms.iter().any(|v| v.status == EvacuatedVmStatus::Placed)
    });
    ha.rack.app.kill9();
    eprintln!(
        "[appliance killed] SIGKILL {:.1} s after the fault, the evacuation was {:?}",
        t0.elapsed().as_secs_f64(),
        caught.phase
    );
    let before = ha.rack.app.log_text();
    // The fence script the killed appliance started may go on: an orphan finishing its
    // power-off, as a BMC would. The restarted appliance must cope either way.
    ha.rack
        .app
        .restart()
        .unwrap_or_else(|e| panic!("{e:#}\nlog before the kill:\n{before}"));
    let moved = wait_restarted(&ha, &[a, b], VICTIM, t0);
    let e = wait_evacuation(
        &ha,
        VICTIM,
        "the evacuation done",
        Duration::from_secs(60),
        |e| e.phase == EvacuationPhase::Done,
    );
    print_times("appliance killed", fault, &e, &moved);
    assert_evacuation_done(&ha, &e, &moved, &[c]);
    // The same evacuation, resumed: not a second one.
    let mac = ha.mac(VICTIM);
    let of_victim: Vec<_> = ok(&ha, ha.evacuations())
        .into_iter()
        .filter(|e| e.host == mac)
        .collect();
    assert_eq!(of_victim.len(), 1, "{of_victim:?}");
    assert_eq!(of_victim[0].started_at, caught.started_at, "{of_victim:?}");
    assert_eq!(ok(&ha, ha.machine_state(VICTIM)), "fenced");
    assert_eq!(ok(&ha, ha.rack.hosts[VICTIM].ns.pids()), Vec::<u32>::new());
    for (name, (host, _)) in &moved {
        assert_runs_once_on(&ha, name, *host);
    }
    assert_stays_down(&ha, c);
    // Still once each a little later: no second start from a replayed step.
    std::thread::sleep(Duration::from_secs(5));
    for (name, (host, _)) in &moved {
        assert_runs_once_on(&ha, name, *host);
    }
}

/// The fence script is what the tests' comments say it is; a test of the fixture on a real
/// namespace, without the appliance.
#[test]
fn the_fence_script_powers_a_namespace_off() {
    cosm_e2e::netns::require_root_tools(&["ip", "sh", "sleep"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fence.sh");
    std::fs::write(&script, FENCE_SCRIPT).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new("sh")
            .arg(&script)
            .args(args)
            .env("COSM_MACHINE_MAC", "52:54:00:c0:48:01")
            .output()
            .unwrap()
    };
    let ns = cosm_e2e::netns::NetNs::new("fence").unwrap();
    let mut sleeper = ns.command("sleep");
    sleeper.arg("300");
    let pid = ns.spawn(sleeper).unwrap();
    // A grandchild that left its parent, as a daemonized libvirtd does.
    let mut daemon = ns.command("sh");
    daemon.args(["-c", "sleep 300 >/dev/null 2>&1 & exit 0"]);
    ns.run_ok(daemon).unwrap();
    assert_eq!(ns.pids().unwrap().len(), 2);

    let status = run(&[ns.name(), "status"]);
    assert!(status.status.success(), "{status:?}");
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "on");
    let refused = run(&[ns.name(), "off-fails", "off"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(ns.pids().unwrap().len(), 2);
    assert!(!run(&[ns.name(), "on"]).status.success());

    let started = Instant::now();
    let off = run(&[ns.name(), "off-delay=1", "off"]);
    assert!(off.status.success(), "{off:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(ns.pids().unwrap(), Vec::<u32>::new());
    assert!(ns.try_wait(pid).unwrap().is_some(), "the sleeper survived");
    let status = run(&[ns.name(), "status"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "off");

    let log = std::fs::read_to_string(dir.path().join("fence.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 10, "{log}");
    assert!(lines[7].ends_with("52:54:00:c0:48:01 off ok"), "{log}");
}
