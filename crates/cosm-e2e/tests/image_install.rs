//! Real installs end to end (issue 16), on the virtual rack: empty QEMU machines (SeaBIOS
//! and OVMF, each with the NIC's iPXE ROM) of a role installed by image PXE-boot the agent
//! ramdisk, whose agent streams the role image from the appliance onto the disk (every
//! 4 MiB chunk checked before it is written), grows the partition table, writes the
//! machine's files and a fresh agent credential, and reports; the next boot goes to the
//! local disk, where the installed Debian's `cosm-agent` service beats with that
//! credential and the machine becomes `active`. A third machine gets an image whose file
//! on the appliance was damaged after its upload (one byte flipped): its install fails
//! naming the chunk and byte range, and it ends `failed`, not `deployed`.
//!
//! A fourth machine, of role `host`, installs the host image (libvirt and QEMU inside) and,
//! once active, runs a VM created through `/api/v1/vms`: the tiny test guest, under QEMU
//! TCG inside the QEMU TCG machine, prints its marker on the console the appliance shows.
//! That is the whole mission in one test: an empty machine to a running VM.
//!
//! The images are `images/out/os/cosm-{base,host}-bookworm.img.zst` from `make os-image
//! ROLE=base` and `ROLE=host` (`make test` builds both first). The four machines share one
//! rack, so the suite boots them once.

use cosm_e2e::guest::{api_console, guest_vm_request, upload_guest, wait_vm};
use cosm_e2e::netns::require_root_tools;
use cosm_e2e::ok_stdout;
use cosm_e2e::rack::{assert_steps_in_order, Firmware, Rack};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const IMAGE: &str = "cosm-base-bookworm.img.zst";
const MANIFEST: &str = "cosm-base-bookworm.manifest.json";
const HOST_IMAGE: &str = "cosm-host-bookworm.img.zst";
const HOST_MANIFEST: &str = "cosm-host-bookworm.manifest.json";
const CHUNK: u64 = 4 << 20;

fn os_image_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/out/os")
}

/// A role's image and its manifest, or a failure saying how to build them.
fn role_image(role: &str, image: &str, manifest: &str) -> (PathBuf, PathBuf) {
    let dir = os_image_dir();
    let (image, manifest) = (dir.join(image), dir.join(manifest));
    for f in [&image, &manifest] {
        assert!(
            f.exists(),
            "{} is missing: build the {role} role image with `make os-image ROLE={role}` (`make test` does)",
            f.display()
        );
    }
    (image, manifest)
}

struct Machine {
    n: u8,
    mac: String,
    firmware: Firmware,
    vm: usize,
    powered_on: Instant,
}

#[test]
fn machines_install_from_a_role_image_boot_it_and_become_active_and_a_damaged_image_fails() {
    require_root_tools(&["ip", "qemu-system-x86_64", "curl"]);
    let (image, manifest) = role_image("base", IMAGE, MANIFEST);
    let (host_image, host_manifest) = role_image("host", HOST_IMAGE, HOST_MANIFEST);
    let mut rack = Rack::start("img", "").unwrap();

    // A role for the base image, and `web` for the damaged copy.
    ok_stdout(
        &rack
            .app
            .cosmctl(&["roles", "add", "base", "--description", "the base image"]),
    );
    let out = ok_stdout(&rack.app.cosmctl(&[
        "images",
        "upload",
        image.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]));
    assert!(out.contains("image for role base"), "{out}");
    let damaged = "cosm-web-damaged.img.zst";
    let mut web_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    web_manifest["role"] = "web".into();
    let web_manifest_path = rack.app.dir.path().join("web.manifest.json");
    std::fs::write(&web_manifest_path, web_manifest.to_string()).unwrap();
    ok_stdout(&rack.app.cosmctl(&[
        "images",
        "upload",
        image.to_str().unwrap(),
        "--name",
        damaged,
        "--manifest",
        web_manifest_path.to_str().unwrap(),
    ]));
    let out = ok_stdout(&rack.app.cosmctl(&[
        "images",
        "upload",
        host_image.to_str().unwrap(),
        "--manifest",
        host_manifest.to_str().unwrap(),
    ]));
    assert!(out.contains("image for role host"), "{out}");
    let list = ok_stdout(&rack.app.cosmctl(&["images", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(IMAGE) && l.contains("base") && l.contains("debian-12")),
        "{list}"
    );
    let roles = ok_stdout(&rack.app.cosmctl(&["roles", "list"]));
    assert!(roles.contains("auto"), "{roles}");
    // The stored copy rots after its upload: one byte in its third chunk.
    let stored = rack.app.dir.path().join("data/images").join(damaged);
    let size = std::fs::metadata(&stored).unwrap().len();
    let flipped_at = (2 * CHUNK + 12345).min(size - 1);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[flipped_at as usize] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    drop(bytes);
    let bad_chunk = flipped_at / CHUNK;

    let mut machines = Vec::new();
    // The host runs libvirtd and a guest beside its agent: more memory than the ramdisk's.
    for (n, firmware, role, memory_mib) in [
        (21u8, Firmware::BiosIpxeRom, "base", 512),
        (22, Firmware::UefiIpxeRom, "base", 512),
        (23, Firmware::BiosIpxeRom, "web", 512),
        (24, Firmware::BiosIpxeRom, "host", 1536),
    ] {
        let mac = format!("52:54:00:c0:53:{n:02x}");
        ok_stdout(&rack.app.cosmctl(&["machines", "add", &mac, "--role", role]));
        let vm = rack.power_on_with(n, firmware, memory_mib).unwrap();
        machines.push(Machine {
            n,
            mac,
            firmware,
            vm,
            powered_on: Instant::now(),
        });
    }

    // Bounded: TCG, three machines on two cores.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut done_at: Vec<Option<Instant>> = vec![None; machines.len()];
    loop {
        for (i, m) in machines.iter().enumerate() {
            if done_at[i].is_some() {
                continue;
            }
            let want = if i == 2 { "failed" } else { "active" };
            let state = rack
                .app
                .api(&format!("/api/v1/machines/{}", m.mac))
                .map(|v| v["state"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            if state == want {
                done_at[i] = Some(Instant::now());
            }
        }
        if done_at.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            let mut why = String::new();
            for m in &machines {
                why.push_str(&format!(
                    "\n== {} ({}) timeline: {:#?}\n-- serial console (tail):\n{}",
                    m.mac,
                    m.firmware.label(),
                    rack.timeline(&m.mac),
                    tail(&rack.serial(m.vm), 60)
                ));
            }
            panic!("not every machine ended as expected within 900 s:{why}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    for (i, m) in machines.iter().enumerate().filter(|(i, _)| *i != 2) {
        let (role, image) = if i == 3 {
            ("host", HOST_IMAGE)
        } else {
            ("base", IMAGE)
        };
        let events = rack.timeline(&m.mac);
        let script = format!("→ image install ({image})");
        assert_steps_in_order(
            &m.mac,
            &events,
            &[
                ("image-install script", &|k, msg| {
                    k == "boot" && msg.contains(&script)
                }),
                ("ramdisk kernel", &|k, msg| {
                    k == "boot" && msg.contains("kernel") && msg.contains("vmlinuz")
                }),
                ("ready → deploying", &|k, msg| {
                    k == "state_changed" && msg.contains("fetched the install plan")
                }),
                ("install plan", &|k, msg| {
                    k == "boot" && msg.contains("install plan served")
                }),
                ("streaming progress", &|k, msg| {
                    k == "boot" && msg.contains("installing: streaming")
                }),
                ("the installed system's credential", &|k, _| {
                    k == "agent_registered"
                }),
                ("deploying → deployed", &|k, msg| {
                    k == "state_changed" && msg.contains("install finished")
                }),
                ("local-disk script", &|k, msg| {
                    k == "boot" && msg.contains("→ local disk")
                }),
                ("deployed → active", &|k, msg| {
                    k == "state_changed" && msg.contains("first heartbeat since the install")
                }),
            ],
        );
        let finished = events
            .iter()
            .find(|(k, msg)| k == "state_changed" && msg.contains("install finished"))
            .map(|(_, msg)| msg.clone())
            .unwrap_or_default();
        // The installed Debian booted from the disk: its getty greets with the hostname
        // the installer wrote (`<role>-<last 6 hex digits of the MAC>`).
        // The agent may beat before the getty prints its prompt: wait for it (bounded).
        let hostname = format!("{role}-c053{:02x}", m.n);
        let prompt = format!("{hostname} login:");
        let until = Instant::now() + Duration::from_secs(120);
        let mut serial = rack.serial(m.vm);
        while !serial.contains(&prompt) && Instant::now() < until {
            std::thread::sleep(Duration::from_secs(1));
            serial = rack.serial(m.vm);
        }
        assert!(
            serial.contains(&prompt),
            "{}: no login prompt of {hostname} on the serial console:\n{}",
            m.mac,
            tail(&serial, 80)
        );
        println!(
            "{} ({}): power-on → active in {:.1} s; {}",
            m.mac,
            m.firmware.label(),
            done_at[i]
                .unwrap()
                .duration_since(m.powered_on)
                .as_secs_f64(),
            finished
        );
    }

    // The damaged image: failed with the chunk and its byte range, never deployed.
    let bad = &machines[2];
    let events = rack.timeline(&bad.mac);
    let failed = events
        .iter()
        .find(|(k, msg)| k == "state_changed" && msg.contains("install failed"))
        .unwrap_or_else(|| panic!("no failed install in {events:#?}"));
    let range = format!(
        "bytes {}..{}",
        bad_chunk * CHUNK,
        ((bad_chunk + 1) * CHUNK).min(size)
    );
    assert!(
        failed.1.contains(&format!("chunk {bad_chunk}")) && failed.1.contains(&range),
        "the failure does not name chunk {bad_chunk} ({range}) where byte {flipped_at} was flipped: {}",
        failed.1
    );
    assert!(
        !events
            .iter()
            .any(|(k, msg)| k == "state_changed" && msg.contains("install finished")),
        "{events:#?}"
    );
    println!(
        "{} ({}): damaged image → failed in {:.1} s: {}",
        bad.mac,
        bad.firmware.label(),
        done_at[2]
            .unwrap()
            .duration_since(bad.powered_on)
            .as_secs_f64(),
        failed.1
    );

    // The installed host runs a VM made through the API: the test guest, nested TCG.
    let host = &machines[3];
    upload_guest(&rack).unwrap();
    let name = format!("nested-{}", std::process::id());
    let mut body = guest_vm_request(&name, 128);
    body["nics"] = serde_json::json!([]);
    body["host"] = serde_json::json!(host.mac);
    let asked = Instant::now();
    let v = rack.app.api_send("POST", "/api/v1/vms", &body).unwrap();
    assert_eq!(v["host"], host.mac.as_str(), "{v}");
    wait_vm(
        &rack.app,
        &name,
        "running on the installed host",
        Duration::from_secs(600),
        |v| v["state"] == "running",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = api_console(&rack.app, &name).unwrap();
        if c.boots.iter().any(|(mark, _)| *mark == name) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} on {} never printed its marker within 600 s; console: {:?}\nhost serial (tail):\n{}",
            host.mac,
            c,
            tail(&rack.serial(host.vm), 40)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "{}: VM {name} created through /api/v1/vms printed its marker {:.1} s after the request (nested TCG)",
        host.mac,
        asked.elapsed().as_secs_f64()
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
