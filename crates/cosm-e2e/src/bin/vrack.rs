//! `vrack`: the virtual rack of `make demo`. Brings up the appliance on a private
//! provisioning network and powers on QEMU machines that boot from the network with real
//! firmware, prints each machine's boot steps as they happen, and ends with a table of the
//! rack. Needs root (network namespaces, a bridge, taps).

use anyhow::Context;
use clap::Parser;
use cosm_e2e::rack::{Firmware, Rack};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    about = "Bring up a virtual rack: the COSM appliance and QEMU machines that network-boot with real BIOS/UEFI firmware",
    long_about = "Bring up a virtual rack: a network namespace with a bridge (192.0.2.1/24), the COSM \
appliance on it (DHCP, TFTP, HTTP boot, API on 192.0.2.1:8080), and QEMU machines (-accel tcg) \
with empty disks that boot from the network: SeaBIOS with the iPXE option ROM, OVMF's own PXE \
(which TFTP-loads snponly.efi) and OVMF's UEFI HTTP Boot. Each machine's boot steps are printed as \
they reach the appliance's timeline. They get roles (base, host, base), and are deployed from the \
role images of `make os-image` (uploaded with their manifests): the ramdisk agent streams the image \
onto the disk and the machine reboots into its installed Debian, whose agent makes it active. At \
the end a table shows the rack.\n\nWith --hosts N \
(DEMO_HOSTS=N), N hypervisor hosts come up first: namespaces on the bridge at 192.0.2.11 and up, \
each with its own libvirtd (qemu+tcp://ADDR/system for migrations) and a cosm-agent, made active \
`host` machines.\n\nNeeds root and the packages `make deps` installs, the agent ramdisk from \
`make image` and the base and host images from `make os-images`."
)]
struct Args {
    /// Leave the rack and the appliance running and print how to reach them with cosmctl.
    #[arg(long, env = "DEMO_KEEP", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    keep: bool,
    /// Also bring up N hypervisor hosts (at most 80): namespaces on the rack's bridge, each with its
    /// own libvirtd and a real cosm-agent (--hypervisor, --migration-uri), made active `host`
    /// machines for VM placement.
    /// With two or more, the demo ends with a VM on each of two hosts and a live migration.
    #[arg(long, env = "DEMO_HOSTS", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=80))]
    hosts: u8,
    /// Seconds to wait for every machine's agent to register.
    #[arg(long, default_value_t = 420)]
    timeout: u64,
    /// Where the web console is forwarded to on this machine with DEMO_KEEP=1.
    #[arg(long, env = "DEMO_CONSOLE", default_value = "127.0.0.1:8443")]
    console: String,
    /// Internal: forward `--console` to the appliance inside this namespace, until killed.
    #[arg(long, hide = true)]
    forward_into: Option<String>,
}

/// Forwards TCP connections on `listen` (this machine) to the appliance's 192.0.2.1:8080
/// inside the rack's namespace `ns`, each connection on its own pair of threads.
fn forward(ns: &str, listen: &str) -> anyhow::Result<()> {
    let l = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    for client in l.incoming().flatten() {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            let up =
                cosm_e2e::bmc::in_netns(&ns, || std::net::TcpStream::connect("192.0.2.1:8080"));
            let Ok(Ok(up)) = up else { return };
            let (Ok(mut from_client), Ok(mut to_up)) = (client.try_clone(), up.try_clone()) else {
                return;
            };
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_up);
                let _ = to_up.shutdown(std::net::Shutdown::Write);
            });
            let (mut from_up, mut to_client) = (up, client);
            let _ = std::io::copy(&mut from_up, &mut to_client);
            let _ = to_client.shutdown(std::net::Shutdown::Write);
            let _ = t.join();
        });
    }
    Ok(())
}

/// The VM part of the demo: two tenant networks, three guests placed on two hosts (two
/// tenants, one subnet), their pings, then a live migration.
fn vms(rack: &Rack) -> anyhow::Result<()> {
    use cosm_e2e::guest::{guest_vm_request, upload_guest, wait_vm};
    step(
        "Virtual machines: the test guest's kernel, initrd and base disk into the image repository",
    );
    rack.wait_hosts_reporting(2, Duration::from_secs(60))?;
    upload_guest(rack)?;
    step("Two tenant networks with the same subnet (POST /api/v1/networks): red and blue, 198.51.100.0/24 each, one VXLAN segment each");
    for net in ["red", "blue"] {
        rack.app.api_send(
            "POST",
            "/api/v1/networks",
            &serde_json::json!({"name": net, "cidr": "198.51.100.0/24"}),
        )?;
    }
    show(rack, &["networks", "list"]);
    step("Three VMs (POST /api/v1/vms): demo-vm1 and demo-vm2 on red, on different hosts, demo-vm3 on blue with demo-vm1's address; each pings a neighbour once a second (cosm.ping=)");
    let started = Instant::now();
    for (name, net, ip, peer, host) in [
        ("demo-vm1", "red", "198.51.100.10", "198.51.100.11", 0),
        ("demo-vm2", "red", "198.51.100.11", "198.51.100.10", 1),
        ("demo-vm3", "blue", "198.51.100.10", "198.51.100.11", 0),
    ] {
        let mut body = guest_vm_request(name, 128);
        body["nics"] = serde_json::json!([{"network": net, "ip": ip}]);
        body["boot"]["cmdline"] = serde_json::json!(format!(
            "console=ttyS0 quiet cosm.marker={name} cosm.ping={peer}"
        ));
        body["host"] = serde_json::json!(rack.hosts[host].mac);
        let v = rack.app.api_send("POST", "/api/v1/vms", &body)?;
        println!(
            "   {name}: {} on {}, {net} {ip}, pinging {peer}",
            v["state"].as_str().unwrap_or("?"),
            v["host"].as_str().unwrap_or("?")
        );
    }
    for name in ["demo-vm1", "demo-vm2", "demo-vm3"] {
        let v = wait_vm(&rack.app, name, "running", Duration::from_secs(180), |v| {
            v["state"] == "running"
        })?;
        println!(
            "   {name}: running on {} after {} s",
            v["host"].as_str().unwrap_or("?"),
            started.elapsed().as_secs()
        );
    }
    show(rack, &["ports", "list"]);
    // The consoles as the appliance shows them (the agent reports them every few seconds).
    step("Within red the guests answer each other across hosts; blue's demo-vm3 gets no answer from red");
    for name in ["demo-vm1", "demo-vm2", "demo-vm3"] {
        let deadline = Instant::now() + Duration::from_secs(120);
        let want = if name == "demo-vm3" { " fail" } else { " ok" };
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            let console = rack
                .app
                .api(&format!("/api/v1/vms/{name}/console?lines=40"))?;
            lines = console["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
                .filter(|l| l.contains("ping "))
                .map(str::to_string)
                .collect();
            if lines.len() >= 3 && lines.iter().rev().take(2).all(|l| l.ends_with(want)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        println!("   {name}'s serial console (GET /api/v1/vms/{name}/console):");
        for l in &lines[lines.len().saturating_sub(3)..] {
            println!("     | {l}");
        }
    }
    let out = rack.app.cosmctl(&["hosts"]);
    if out.status.success() {
        step("The hosts (cosmctl hosts)");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    step("Live migration of demo-vm1 to the other host (POST /api/v1/vms/demo-vm1/migrate): the guest keeps running, its address and its peer");
    let from = rack.app.api("/api/v1/vms/demo-vm1")?["host"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let asked = Instant::now();
    rack.app.api_send(
        "POST",
        "/api/v1/vms/demo-vm1/migrate",
        &serde_json::json!({}),
    )?;
    let v = wait_vm(
        &rack.app,
        "demo-vm1",
        "the migration",
        Duration::from_secs(120),
        |v| v["state"] == "running" && v["host"] != from.as_str(),
    )?;
    println!(
        "   demo-vm1: {from} → {} in {:.1} s",
        v["host"].as_str().unwrap_or("?"),
        asked.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(4));
    let console = rack.app.api("/api/v1/vms/demo-vm1/console?lines=12")?;
    println!("   its console on the new host (198.51.100.10 still, demo-vm2 still answering):");
    let lines: Vec<&str> = console["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    for l in &lines[lines.len().saturating_sub(4)..] {
        println!("     | {l}");
    }
    step("demo-vm1's timeline (GET /api/v1/vms/demo-vm1/events)");
    for e in rack
        .app
        .api("/api/v1/vms/demo-vm1/events")?
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "   {}  {}",
            e["at"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Runs `cosmctl args…` against the rack and prints its table.
fn show(rack: &Rack, args: &[&str]) {
    let out = rack.app.cosmctl(args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// Prints each machine's new timeline lines as they come, until `done` has held for a
/// line of every machine; fails after `timeout` naming the machines not done, with the
/// end of their consoles.
fn follow(
    rack: &Rack,
    seen: &mut [usize],
    started: Instant,
    timeout: Duration,
    done: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut finished = vec![false; rack.vms.len()];
    while finished.iter().any(|d| !d) {
        for (i, vm) in rack.vms.iter().enumerate() {
            let events = rack.timeline(&vm.mac);
            for (kind, message) in events.iter().skip(seen[i]) {
                println!(
                    "   [{:>3} s] {}  {:<16} {:<16} {}",
                    started.elapsed().as_secs(),
                    vm.mac,
                    vm.firmware.label(),
                    kind,
                    message
                );
                finished[i] |= done(kind, message);
            }
            seen[i] = seen[i].max(events.len());
        }
        if Instant::now() > deadline {
            for (i, vm) in rack.vms.iter().enumerate().filter(|(i, _)| !finished[*i]) {
                let serial = rack.serial(i);
                let tail: Vec<&str> = serial.lines().rev().take(15).collect();
                eprintln!(
                    "\n{} ({}) did not get there within {} s; its console ends with:",
                    vm.mac,
                    vm.firmware.label(),
                    timeout.as_secs()
                );
                for l in tail.into_iter().rev() {
                    eprintln!("   | {l}");
                }
            }
            anyhow::bail!(
                "not every machine got there; the appliance log is in {}",
                rack.app.dir.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(ns) = &args.forward_into {
        return forward(ns, &args.console);
    }
    let machines = [
        (1u8, Firmware::BiosIpxeRom),
        (2, Firmware::UefiPxe),
        (3, Firmware::UefiHttp),
    ];
    step("A private provisioning network: a namespace with bridge br0 = 192.0.2.1/24; the appliance serves DHCP, TFTP and HTTP boot on it");
    let os_images = cosm_e2e::rack::ramdisk_dir().join("os");
    let role_images: Vec<(&str, std::path::PathBuf, std::path::PathBuf)> = ["base", "host"]
        .into_iter()
        .map(|role| {
            (
                role,
                os_images.join(format!("cosm-{role}-bookworm.img.zst")),
                os_images.join(format!("cosm-{role}-bookworm.manifest.json")),
            )
        })
        .collect();
    for (role, image, manifest) in &role_images {
        anyhow::ensure!(
            image.exists() && manifest.exists(),
            "{} is missing: build the {role} role image with `make os-image ROLE={role}` (`make demo` does)",
            image.display()
        );
    }
    let mut rack = Rack::start("cosmdemo", "[agents]\nheartbeat_secs = 2\n")?;
    println!(
        "   namespace {}, API {}, data in {}",
        rack.ns.name(),
        rack.app.url(),
        rack.app.dir.path().join("data").display()
    );

    if args.hosts > 0 {
        step(&format!(
            "{} hypervisor host(s): a namespace on the bridge each, with its own libvirtd and cosm-agent; made active `host` machines",
            args.hosts
        ));
        rack.start_hosts(args.hosts, Duration::from_secs(60))?;
        let mut table = comfy_table::Table::new();
        table
            .load_preset(comfy_table::presets::NOTHING)
            .set_header(["HOST", "MAC", "ADDRESS", "LIBVIRT (local)", "MIGRATION URI"]);
        for h in &rack.hosts {
            table.add_row([
                h.ns.name().to_string(),
                h.mac.clone(),
                h.addr.to_string(),
                h.uri(),
                h.tcp_uri(),
            ]);
        }
        println!("{table}");
    }

    step("Powering on three machines with empty disks; each boots from the network");
    for (n, fw) in machines {
        let vm = rack.power_on(n, fw)?;
        let v = &rack.vms[vm];
        println!(
            "   {}  {:<16} {} CPUs, {} MiB, {} GiB disk",
            v.mac,
            fw.label(),
            v.cpus,
            v.memory_mib,
            v.disk_bytes >> 30
        );
    }

    step("Boot progress, from each machine's timeline on the appliance");
    let started = Instant::now();
    let mut seen = vec![0usize; rack.vms.len()];
    follow(
        &rack,
        &mut seen,
        started,
        Duration::from_secs(args.timeout),
        |kind, _| kind == "agent_registered",
    )?;

    step("Role images into the image repository (cosmctl images upload --manifest): minimized Debian 12 with the agent inside, from `make os-image`");
    let out = rack.app.cosmctl(&[
        "roles",
        "add",
        "base",
        "--description",
        "the base OS image: Debian 12, systemd, SSH, cosm-agent",
    ]);
    anyhow::ensure!(
        out.status.success(),
        "roles add base failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, image, manifest) in &role_images {
        let out = rack.app.cosmctl(&[
            "images",
            "upload",
            &image.to_string_lossy(),
            "--manifest",
            &manifest.to_string_lossy(),
        ]);
        print!("   {}", String::from_utf8_lossy(&out.stdout));
        anyhow::ensure!(
            out.status.success(),
            "upload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    show(&rack, &["images", "list"]);
    show(&rack, &["roles", "list"]);

    step("Giving the machines roles with cosmctl: each becomes ready to install (install method: image, since its role has one)");
    for (vm, role) in rack.vms.iter().zip(["base", "host", "base"]) {
        let out = rack.app.cosmctl(&["machines", "set-role", &vm.mac, role]);
        print!("   {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("   {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    step("Deploying: cosmctl machines deploy MAC (the ramdisk agent reboots, streams its role image onto the disk, writes hostname, network and a fresh agent credential, and reboots into the installed OS)");
    for vm in &rack.vms {
        let out = rack.app.cosmctl(&["machines", "deploy", &vm.mac]);
        print!("   {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("   {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    follow(
        &rack,
        &mut seen,
        started,
        Duration::from_secs(args.timeout),
        |kind, message| {
            kind == "state_changed" && message.contains("first heartbeat since the install")
        },
    )?;

    step(&format!(
        "The rack, {} s after power-on",
        started.elapsed().as_secs()
    ));
    let leases = rack.app.api("/api/v1/leases")?;
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "MAC", "FIRMWARE", "ROLE", "STATE", "IP", "CPUS", "MEMORY", "DISKS",
        ]);
    for vm in &rack.vms {
        let m = rack
            .app
            .api(&format!("/api/v1/machines/{}", vm.mac))
            .with_context(|| format!("machine {}", vm.mac))?;
        let inv = &m["inventory"];
        let ip = leases
            .as_array()
            .and_then(|a| a.iter().find(|l| l["mac"] == vm.mac.as_str()))
            .and_then(|l| l["ip"].as_str())
            .unwrap_or("-")
            .to_string();
        let disks: Vec<String> = inv["disks"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|d| {
                        format!(
                            "{} {}",
                            d["name"].as_str().unwrap_or("?"),
                            cosm_wire::human_bytes(d["size_bytes"].as_u64().unwrap_or(0))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        table.add_row([
            vm.mac.clone(),
            format!(
                "{} ({})",
                vm.firmware.label(),
                inv["firmware"].as_str().unwrap_or("?")
            ),
            m["role"].as_str().unwrap_or("-").to_string(),
            m["state"].as_str().unwrap_or("?").to_string(),
            ip,
            inv["cpu"]["threads"].to_string(),
            cosm_wire::human_bytes(inv["memory_bytes"].as_u64().unwrap_or(0)),
            disks.join(", "),
        ]);
    }
    println!("{table}");

    let first = rack.vms[1].mac.clone();
    step(&format!(
        "The boot timeline of {first} (UEFI PXE): cosmctl events {first}"
    ));
    let out = rack.app.cosmctl(&["events", &first]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    if rack.hosts.len() >= 2 {
        vms(&rack)?;
    }

    let fingerprint = rack
        .app
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("fingerprint ")
                .nth(1)
                .map(|f| f.split(['"', ' ', ',']).next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "(see the appliance log)".into());
    step("The web console: https://192.0.2.1:8080/ on the provisioning network (the API port speaks HTTPS too)");
    println!("   self-signed certificate, SHA-256 fingerprint {fingerprint}");
    println!("   log in with the admin token below (or the password set in its first-run wizard)");

    if args.keep {
        step("DEMO_KEEP=1: the rack and the appliance keep running");
        let ns = rack.ns.name().to_string();
        // The console from this machine: a forwarder on loopback into the namespace (no
        // address of the rack's subnet is put on this machine, which may use it itself).
        let forwarder = std::process::Command::new(std::env::current_exe()?)
            .args(["--forward-into", &ns, "--console", &args.console])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start the console forwarder")?;
        println!(
            "   web console from this machine: https://{}/ (forwarded to 192.0.2.1:8080 in {ns})",
            args.console
        );
        println!(
            "   from your workstation: ssh -L 8443:{} root@<this machine>, then https://localhost:8443/",
            args.console
        );
        println!("   admin token: {}", rack.app.token());
        println!(
            "   export COSM_URL={} COSM_TOKEN={}",
            rack.app.url(),
            rack.app.token()
        );
        println!(
            "   ip netns exec {ns} {} machines list",
            cosm_e2e::bin("cosmctl").display()
        );
        let pids: Vec<String> = rack
            .vms
            .iter()
            .map(|v| v.pid.to_string())
            .chain(
                rack.hosts
                    .iter()
                    .filter_map(|h| h.agent)
                    .map(|p| p.to_string()),
            )
            .chain(
                rack.hosts
                    .iter()
                    .filter_map(|h| h.libvirtd.pid())
                    .map(|p| p.to_string()),
            )
            .chain([rack.app.pid().to_string(), forwarder.id().to_string()])
            .collect();
        let host_ns: Vec<&str> = rack.hosts.iter().map(|h| h.ns.name()).collect();
        println!(
            "   stop everything with: kill {}; for n in {ns} {}; do ip netns del $n; done",
            pids.join(" "),
            host_ns.join(" ")
        );
        std::mem::forget(rack);
        return Ok(());
    }
    step("Done; powering off the machines, stopping the appliance, removing the namespace (DEMO_KEEP=1 keeps them)");
    drop(rack);
    Ok(())
}
