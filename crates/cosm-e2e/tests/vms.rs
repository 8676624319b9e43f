//! Virtual machines end to end (issue 12): the appliance, three hypervisor hosts of the
//! virtual rack (each a network namespace with its own libvirtd and a real `cosm-agent`
//! running the VM controller), and real QEMU TCG guests booting the tiny test guest
//! (`images/guest.sh`) from the image repository: a kernel, an initrd, and a qcow2 overlay
//! of a base image, all downloaded by the host's agent and checked by sha256.
//!
//! One test walks the whole life, sharing the booted hosts (each guest boot is about 10 s
//! of TCG): placement across the hosts with anti-affinity and a refusal with each host's
//! reason; create → running with the marker on the console; stop (ACPI), start, reboot
//! (the boot counter on the disk goes up); a snapshot reverted undoes a disk change; a
//! QEMU killed by hand is started again by reconcile, on the VM's timeline; a live
//! migration keeps the guest counting on the other host and leaves nothing behind; delete.
//!
//! Needs root, libvirtd (libvirt-daemon-system), QEMU, qemu-img and `make image`'s files;
//! fails, never skips, naming what is missing.

use anyhow::bail;
use cosm_e2e::guest::{api_console, guest_vm_request, upload_guest, vm_timeline};
use cosm_e2e::rack::Rack;
use cosm_hypervisor::{Hypervisor, VmName};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A guest boot under TCG on a loaded 2-core machine, with room.
const BOOT: Duration = Duration::from_secs(150);

fn vm(rack: &Rack, name: &str) -> anyhow::Result<Value> {
    rack.app.api(&format!("/api/v1/vms/{name}"))
}

fn state_is(want: &'static str) -> impl FnMut(&Value) -> bool {
    move |v| v["state"] == want
}

/// Waits until the console the appliance shows has a boot line with count `boot`.
fn wait_boot(rack: &Rack, name: &str, marker: &str, boot: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOOT;
    loop {
        let c = api_console(&rack.app, name)?;
        if c.boots.iter().any(|(m, n)| m == marker && *n == boot) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name}: no `COSM-GUEST {marker} boot={boot}` on its console within {BOOT:?}: {c:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn host_index(rack: &Rack, mac: &str) -> usize {
    rack.hosts
        .iter()
        .position(|h| h.mac == mac)
        .unwrap_or_else(|| panic!("{mac} is not a rack host"))
}

fn timeline(rack: &Rack, name: &str) -> anyhow::Result<Vec<String>> {
    vm_timeline(&rack.app, name)
}

fn guest_body(name: &str, host: Option<&str>) -> Value {
    let mut b = guest_vm_request(name, 128);
    b["anti_affinity"] = json!("spread");
    if let Some(h) = host {
        b["host"] = json!(h);
    }
    b
}

/// [`cosm_e2e::guest::wait_vm`] on the rack's appliance.
fn wait_vm(
    rack: &Rack,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    cosm_e2e::guest::wait_vm(&rack.app, name, what, timeout, done)
}

#[test]
fn vms_live_on_the_racks_hosts_through_their_agents() {
    let mut rack = Rack::start("vms", "").unwrap();
    rack.start_hosts(3, Duration::from_secs(120)).unwrap();
    rack.wait_hosts_reporting(3, Duration::from_secs(60))
        .unwrap();

    upload_guest(&rack).unwrap();

    // Placement: three VMs of one anti-affinity group land on three hosts; a fourth has
    // nowhere to go, and nothing fits 4 TiB, with each host's reason.
    let started = Instant::now();
    let mut on = std::collections::BTreeMap::new();
    for (name, host) in [
        ("vm-a", Some(rack.hosts[0].mac.clone())),
        ("vm-b", None),
        ("vm-c", None),
    ] {
        let v = rack
            .app
            .api_send("POST", "/api/v1/vms", &guest_body(name, host.as_deref()))
            .unwrap();
        assert_eq!(v["state"], "scheduled", "{v}");
        on.insert(name, v["host"].as_str().unwrap().to_string());
    }
    assert_eq!(
        on.values().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "{on:?}"
    );
    let refused = rack
        .app
        .api_send("POST", "/api/v1/vms", &guest_body("vm-d", None))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("no_host")
            && refused.contains("anti-affinity group")
            && refused.contains("spread"),
        "{refused}"
    );
    let refused = rack
        .app
        .api_send(
            "POST",
            "/api/v1/vms",
            &json!({"name": "huge", "kind": "tcg", "vcpus": 1, "memory_mib": 4u64 << 20}),
        )
        .unwrap_err()
        .to_string();
    for h in &rack.hosts {
        assert!(
            refused.contains(&format!("{}: ", h.mac)) && refused.contains("MiB free"),
            "{refused}"
        );
    }

    // Create → running, the marker on the console the appliance shows; the disk is an
    // overlay of the downloaded base, whose boot counter starts at 0.
    for name in ["vm-a", "vm-b", "vm-c"] {
        wait_vm(&rack, name, "running", BOOT, state_is("running")).unwrap();
        wait_boot(&rack, name, name, 1).unwrap();
    }
    eprintln!(
        "three VMs created → running with their marker: {:?}",
        started.elapsed()
    );
    let disk = rack.vm_storage().join("vms/vm-a/disk0.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout)
        .unwrap_or_else(|e| panic!("qemu-img info {}: {e}: {info:?}", disk.display()));
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.contains("images/")),
        "vm-a's disk is not an overlay of the cached image: {info}"
    );

    // Stop (ACPI), start, reboot: each boot counts one more on the disk.
    rack.app
        .api_send(
            "POST",
            "/api/v1/vms/vm-a/stop",
            &json!({"timeout_secs": 60}),
        )
        .unwrap();
    wait_vm(
        &rack,
        "vm-a",
        "stopped",
        Duration::from_secs(90),
        state_is("stopped"),
    )
    .unwrap();
    let tl = timeline(&rack, "vm-a").unwrap();
    assert!(
        tl.iter().any(|m| m.contains("the guest powered off")),
        "{tl:?}"
    );
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/start", &json!({}))
        .unwrap();
    wait_vm(&rack, "vm-a", "running", BOOT, state_is("running")).unwrap();
    wait_boot(&rack, "vm-a", "vm-a", 2).unwrap();
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/reboot", &json!({}))
        .unwrap();
    wait_boot(&rack, "vm-a", "vm-a", 3).unwrap();

    // Snapshot at boot 3, reboot (the disk now says 4), revert: the disk says 3 again, so
    // the next reboot prints 4 a second time instead of 5.
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/snapshots", &json!({"name": "s1"}))
        .unwrap();
    wait_vm(&rack, "vm-a", "snapshot s1", Duration::from_secs(60), |v| {
        v["snapshots"] == json!([{"name": "s1"}]) && v["pending_ops"] == json!([])
    })
    .unwrap();
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/reboot", &json!({}))
        .unwrap();
    wait_boot(&rack, "vm-a", "vm-a", 4).unwrap();
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/snapshots/s1/revert", &json!({}))
        .unwrap();
    wait_vm(&rack, "vm-a", "revert", Duration::from_secs(60), |v| {
        v["pending_ops"] == json!([])
    })
    .unwrap();
    rack.app
        .api_send("POST", "/api/v1/vms/vm-a/reboot", &json!({}))
        .unwrap();
    let a = host_index(&rack, on["vm-a"].as_str());
    let hv_a = rack.hosts[a].libvirtd.connect().unwrap();
    let name_a = VmName::new("vm-a").unwrap();
    cosm_e2e::guest::wait_console(&hv_a, &name_a, BOOT, "a boot after the revert", |c| {
        c.boots.iter().filter(|(_, n)| *n == 4).count() >= 2
    })
    .map(|c| assert!(!c.boots.iter().any(|(_, n)| *n == 5), "{c:?}"))
    .unwrap();
    let tl = timeline(&rack, "vm-a").unwrap();
    assert!(
        tl.iter()
            .any(|m| m.starts_with("revert to snapshot s1 done")),
        "{tl:?}"
    );

    // A QEMU killed by hand: reconcile starts it again, and says so on the timeline.
    let b = host_index(&rack, on["vm-b"].as_str());
    let pid = rack.hosts[b]
        .libvirtd
        .guest_pid("vm-b")
        .expect("vm-b's QEMU pidfile");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let restarted = Instant::now();
    wait_vm(
        &rack,
        "vm-b",
        "restart by reconcile",
        Duration::from_secs(60),
        |_| {
            timeline(&rack, "vm-b")
                .unwrap_or_default()
                .iter()
                .any(|m| m.contains("started again"))
        },
    )
    .unwrap();
    eprintln!("killed QEMU started again after {:?}", restarted.elapsed());
    wait_boot(&rack, "vm-b", "vm-b", 2).unwrap();
    assert_eq!(vm(&rack, "vm-b").unwrap()["state"], "running");

    // Delete vm-b: its domain and files go, then its record. Its host is then the only
    // one without a VM of the group "spread", so that is where vm-c live-migrates to.
    rack.app
        .api_send("DELETE", "/api/v1/vms/vm-b", &json!({}))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while rack.app.api("/api/v1/vms/vm-b").is_ok() {
        assert!(Instant::now() < deadline, "vm-b was not deleted");
        std::thread::sleep(Duration::from_millis(500));
    }
    let hv_b = rack.hosts[b].libvirtd.connect().unwrap();
    assert!(
        hv_b.list().unwrap().iter().all(|d| d.name != "vm-b"),
        "vm-b's domain is still on its host"
    );

    let c = host_index(&rack, on["vm-c"].as_str());
    let hv_c = rack.hosts[c].libvirtd.connect().unwrap();
    let name_c = VmName::new("vm-c").unwrap();
    let before = cosm_e2e::guest::wait_console(&hv_c, &name_c, BOOT, "counter 3", |c| {
        c.last_counter() >= Some(3)
    })
    .unwrap();
    let asked = Instant::now();
    let v = rack
        .app
        .api_send("POST", "/api/v1/vms/vm-c/migrate", &json!({}))
        .unwrap();
    assert_eq!(v["state"], "migrating", "{v}");
    let moved = wait_vm(&rack, "vm-c", "migration", Duration::from_secs(120), |v| {
        v["state"] == "running" && v["host"] != on["vm-c"].as_str()
    })
    .unwrap();
    let took = asked.elapsed();
    assert_eq!(moved["host"], rack.hosts[b].mac.as_str(), "{moved}");
    let hv_dest = rack.hosts[b].libvirtd.connect().unwrap();
    let after = cosm_e2e::guest::wait_console(
        &hv_dest,
        &name_c,
        Duration::from_secs(30),
        "the counter going on",
        |c| c.last_counter() > before.last_counter(),
    )
    .unwrap();
    assert_eq!(
        after.boots.len(),
        before.boots.len(),
        "vm-c booted again: {after:?}"
    );
    assert!(
        hv_c.list().unwrap().iter().all(|d| d.name != "vm-c"),
        "vm-c still has a domain on its old host: nothing may run twice"
    );
    let tl = timeline(&rack, "vm-c").unwrap();
    assert!(
        tl.iter().any(|m| m.starts_with("live-migrated from")),
        "{tl:?}"
    );
    eprintln!("live migration asked → running on the new host: {took:?}");

    // Delete: the domain goes from its host, then the record.
    rack.app
        .api_send("DELETE", "/api/v1/vms/vm-a", &json!({}))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while rack.app.api("/api/v1/vms/vm-a").is_ok() {
        assert!(Instant::now() < deadline, "vm-a was not deleted");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(hv_a.list().unwrap().iter().all(|d| d.name != "vm-a"));
    assert!(
        !rack.vm_storage().join("vms/vm-a").exists(),
        "vm-a's files were left"
    );
}
