//! The real agent ramdisk (`make image`) boots in QEMU (direct kernel boot, `-accel tcg`)
//! inside a network namespace with the appliance: it loads its drivers, takes a DHCP lease
//! from the appliance, and its agent enrols. The inventory the appliance stores matches
//! the VM: MAC, CPU count, memory (within what the kernel reserves) and disk size. Then
//! the VM is killed and the machine goes `lost`.

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const VM_MAC: &str = "52:54:00:ab:cd:01";
const VM_CPUS: u64 = 2;
const VM_MEMORY_MIB: u64 = 512;
const DISK_BYTES: u64 = 2 << 30;

fn ip(ns: &NetNs, args: &[&str]) {
    let mut c = ns.command("ip");
    c.args(args);
    ns.run_ok(c).unwrap();
}

#[test]
fn ramdisk_boots_in_qemu_enrols_with_a_matching_inventory_and_goes_lost_when_killed() {
    require_root_tools(&["ip", "qemu-system-x86_64", "curl"]);
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/out");
    let (kernel, initrd) = (images.join("vmlinuz"), images.join("initramfs.img"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the agent ramdisk is not built: run `make image` (`make test` does)"
    );
    let rack = NetNs::new("rdk").unwrap();
    ip(&rack, &["link", "add", "br0", "type", "bridge"]);
    ip(&rack, &["addr", "add", "192.0.2.1/24", "dev", "br0"]);
    ip(&rack, &["link", "set", "br0", "up"]);
    ip(&rack, &["tuntap", "add", "tap0", "mode", "tap"]);
    ip(&rack, &["link", "set", "tap0", "master", "br0", "up"]);
    let config = r#"
[agents]
heartbeat_secs = 1
missed_beats = 3
[dhcp]
server_id = "192.0.2.1"
interface = "br0"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
routers = ["192.0.2.1"]
"#;
    let app = Appliance::start_listening(Some(rack.name()), "192.0.2.1:0", config).unwrap();
    let token = {
        let out = app
            .command(Path::new("curl"))
            .args([
                "-sS",
                "-m",
                "10",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {}", app.token()))
            .args(["-d", r#"{"name":"ramdisk","scope":"enroll"}"#])
            .arg(format!("{}/api/v1/tokens", app.url()))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_string()
    };

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let serial = dir.path().join("serial.log");
    let mut vm = rack.command("qemu-system-x86_64");
    vm.args([
        "-accel",
        "tcg",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .args([
        "-m",
        &VM_MEMORY_MIB.to_string(),
        "-smp",
        &VM_CPUS.to_string(),
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 cosm.appliance={} cosm.token={token}",
        app.url()
    ))
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
    .arg("-device")
    .arg(format!("virtio-net-pci,netdev=n0,mac={VM_MAC}"))
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", disk.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let vm_pid = rack.spawn(vm).unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let machine = loop {
        if let Ok(m) = app.api(&format!("/api/v1/machines/{VM_MAC}")) {
            if m["inventory"].is_object() {
                break m;
            }
        }
        if Instant::now() > deadline {
            let console = std::fs::read_to_string(&serial).unwrap_or_default();
            panic!("the ramdisk's agent did not enrol within 120 s; serial console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // The appliance records the machine before the agent has read the answer and written
    // its "enrolled as" line to the serial console (it stores its credential first): under
    // load the console lags the API by seconds, so wait for the line (bounded) before
    // checking what the console says.
    let wanted = format!("enrolled as {VM_MAC}");
    let console_deadline = Instant::now() + Duration::from_secs(30);
    let console = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains(&wanted) || Instant::now() > console_deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        console.contains("cosm ramdisk: eth0 has 192.0.2.1"),
        "no DHCP lease on the console:\n{console}"
    );
    assert!(
        console.contains(&format!("enrolled as {VM_MAC}")),
        "{console}"
    );

    let inv = &machine["inventory"];
    assert_eq!(machine["state"], "discovered");
    assert_eq!(inv["cpu"]["threads"].as_u64(), Some(VM_CPUS));
    let mem = inv["memory_bytes"].as_u64().unwrap();
    let full = VM_MEMORY_MIB << 20;
    // The kernel keeps some memory for itself; it never reports more than the VM has.
    assert!(
        mem <= full && mem >= full * 80 / 100,
        "memory {mem} vs {full}"
    );
    let disks = inv["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{inv}");
    assert_eq!(
        (disks[0]["name"].as_str(), disks[0]["size_bytes"].as_u64()),
        (Some("vda"), Some(DISK_BYTES))
    );
    assert!(
        inv["nics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mac"] == VM_MAC),
        "{inv}"
    );
    assert_eq!(inv["firmware"], "bios");
    let leases = app.api(&format!("/api/v1/leases?mac={VM_MAC}")).unwrap();
    assert_eq!(
        leases[0]["state"], "bound",
        "the VM's address came from the appliance: {leases}"
    );

    // The VM dies: three missed heartbeats later the machine is lost.
    rack.kill(vm_pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.api(&format!("/api/v1/machines/{VM_MAC}")).unwrap()["state"] != "lost" {
        assert!(
            Instant::now() < deadline,
            "the killed VM's machine was not marked lost within 20 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_image_build_is_reproducible_and_within_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let mut sums = Vec::new();
    for n in 0..2 {
        let out = dir.path().join(format!("out{n}"));
        let run = std::process::Command::new(root.join("images/build.sh"))
            .current_dir(&root)
            .env("IMAGE_OUT", &out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "images/build.sh failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let initrd = std::fs::read(out.join("initramfs.img")).unwrap();
        assert!(
            initrd.len() <= 40 << 20,
            "initramfs is {} bytes, over the 40 MB budget",
            initrd.len()
        );
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        let sum = text
            .lines()
            .find(|l| l.contains("initramfs.img"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_string();
        sums.push(sum);
    }
    assert_eq!(sums[0], sums[1], "two builds from the same inputs differ");
}
