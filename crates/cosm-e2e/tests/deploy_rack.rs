//! The deploy flow end to end in the virtual rack: a QEMU machine (SeaBIOS + iPXE ROM,
//! empty disk) registered with role `host` PXE-boots; its iPXE script points at the
//! installer kernel and initrd from the image repository, with an `inst.ks` URL that
//! serves a valid kickstart; the install's success report moves it to `deployed`; on the
//! next boot it is sent to its local disk.
//!
//! CentOS media cannot be downloaded here, so the installer is played by a stand-in built
//! from the agent ramdisk (images/build.sh): booted with `inst.ks=`, it fetches the
//! kickstart and makes the same calls the kickstart's %post makes (agent binary and unit
//! from the appliance, `cosm-agent run --enroll-only`, the install report). The kickstart
//! it was served is checked with ksvalidator here, as the templates' own tests do.

use cosm_e2e::netns::require_root_tools;
use cosm_e2e::ok_stdout;
use cosm_e2e::rack::{assert_steps_in_order, ramdisk_dir, Firmware, Rack};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn a_host_pxe_boots_the_installer_is_deployed_and_then_boots_from_disk() {
    require_root_tools(&["ip", "qemu-system-x86_64", "curl"]);
    let mut rack = Rack::start(
        "dep",
        // The stand-in's "installed system" is not a real OS whose agent keeps beating, so
        // the machine must not turn `lost` during the test.
        "[agents]\nheartbeat_secs = 60\nmissed_beats = 100\n[kickstart]\nrelease = \"rocky-9\"\nrepo_url = \"http://192.0.2.1:8080/repo/rocky-9/\"\n",
    )
    .unwrap();
    // The installer's kernel and initrd go into the image repository under the names the
    // release looks for.
    let images = ramdisk_dir();
    for (file, name) in [
        ("vmlinuz", "rocky-9-vmlinuz"),
        ("initramfs.img", "rocky-9-initrd.img"),
    ] {
        let path = images.join(file);
        let out = ok_stdout(&rack.app.cosmctl(&[
            "images",
            "upload",
            path.to_str().unwrap(),
            "--name",
            name,
        ]));
        assert!(out.contains(&format!("uploaded {name}")), "{out}");
    }
    let list = ok_stdout(&rack.app.cosmctl(&["images", "list"]));
    assert!(
        list.contains("rocky-9-vmlinuz") && list.contains("rocky-9-initrd.img"),
        "{list}"
    );

    let mac = "52:54:00:c0:53:07";
    ok_stdout(&rack.app.cosmctl(&[
        "machines",
        "add",
        mac,
        "--role",
        "host",
        "--hostname",
        "hv1",
    ]));
    let vm = rack.power_on(7, Firmware::BiosIpxeRom).unwrap();
    assert_eq!(rack.vms[vm].mac, mac);

    // Deployed, then sent to its local disk at the next boot.
    let deadline = Instant::now() + Duration::from_secs(400);
    let events = loop {
        let events = rack.timeline(mac);
        let deployed = events
            .iter()
            .position(|(k, m)| k == "state_changed" && m.contains("install finished"));
        if let Some(d) = deployed {
            if events[d..]
                .iter()
                .any(|(k, m)| k == "boot" && m.contains("→ local disk"))
            {
                break events;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no deploy and local-disk boot within 400 s.\ntimeline: {events:#?}\nserial console:\n{}\nappliance log:\n{}",
            rack.serial(vm),
            rack.app.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_steps_in_order(
        mac,
        &events,
        &[
            ("installer script", &|k, m| {
                k == "boot" && m.contains("Rocky Linux 9 installer")
            }),
            ("installer kernel", &|k, m| {
                k == "boot"
                    && m.contains("kernel rocky-9-vmlinuz fetched from the image repository")
            }),
            ("installer initrd", &|k, m| {
                k == "boot"
                    && m.contains("initrd rocky-9-initrd.img fetched from the image repository")
            }),
            ("ready → deploying", &|k, m| {
                k == "state_changed" && m.contains("fetched its kickstart")
            }),
            ("the installed agent's enrolment", &|k, _| {
                k == "agent_registered"
            }),
            ("deploying → deployed", &|k, m| {
                k == "state_changed" && m.contains("install finished")
            }),
            ("local-disk script", &|k, m| {
                k == "boot" && m.contains("→ local disk")
            }),
        ],
    );
    let m = rack.app.api(&format!("/api/v1/machines/{mac}")).unwrap();
    assert_eq!(m["state"], "deployed", "{m}");
    let serial = rack.serial(vm);
    assert!(
        serial.contains("cosm installer stand-in: install reported; rebooting"),
        "{serial}"
    );

    // The kickstart it was served is valid RHEL 9 syntax and is the host template.
    let ks = ok_stdout(&rack.app.cosmctl(&["kickstart", "render", mac]));
    assert!(
        ks.contains("\nqemu-kvm\n") && ks.contains("--hostname=hv1"),
        "{ks}"
    );
    let file = rack.app.dir.path().join("served.ks");
    std::fs::write(&file, &ks).unwrap();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/ksvalidator");
    let out = std::process::Command::new(&venv)
        .args(["-e", "-v", "RHEL9"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `make deps` (pip install pykickstart into .venv)",
                venv.display()
            )
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Redeploy starts over: back to ready, and the next boot installs again.
    let out = ok_stdout(&rack.app.cosmctl(&["machines", "redeploy", mac]));
    assert!(out.contains("is ready"), "{out}");
}
