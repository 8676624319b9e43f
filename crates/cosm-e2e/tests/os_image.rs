//! The OS images (`make os-image`, images/os-image.sh): a GPT disk image of a minimized
//! Debian 12 with the agent inside.
//!
//! - Two builds of the base image give the same bytes, and its manifest lists exactly the
//!   packages installed in the image (the dpkg status read from the image's root partition
//!   with debugfs); the layout is the one the installer relies on.
//! - The image `make os-image` built boots on BIOS (SeaBIOS, syslinux) and on UEFI (OVMF,
//!   systemd-boot) under QEMU TCG until systemd starts cosm-agent, on a disk 1 GiB larger
//!   than the image whose partition table the test grows as the installer will: the root
//!   file system grows to its partition at first boot.
//!
//! Needs root (mmdebstrap, network namespaces) and the tools `make deps` installs; `make
//! test` builds the base image first. One heavy step at a time: the three tests take turns.

use cosm_e2e::netns::{require_root_tools, run_checked, run_timeout, NetNs};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const ROLE: &str = "base";
/// TCG boots take 25-70 s on an idle machine; bounded well above that.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long an image build may take (a cold one installs the root file system).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// The disk is this much larger than the image.
const GROW_BYTES: u64 = 1 << 30;
/// systemd's console line when it has started the agent (colours removed).
const AGENT_MARKER: &str = "Started cosm-agent.service";
/// The serial getty's prompt (the image's hostname is `cosm`).
const LOGIN: &str = "cosm login:";
/// The kernel's line when the root file system grows to its partition.
const RESIZED: &str = "EXT4-fs (vda2): resized filesystem to ";

static HEAVY: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require_tools() {
    require_root_tools(&[
        "mmdebstrap",
        "apt-ftparchive",
        "zstd",
        "sfdisk",
        "debugfs",
        "mkfs.ext4",
        "mkfs.fat",
        "mcopy",
        "qemu-system-x86_64",
        "ip",
    ]);
}

/// Large files go to /var/tmp (/tmp may be memory).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cosm-os-image-test.")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

fn read_manifest(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn unzstd(img: &Path, raw: &Path) {
    let mut c = Command::new("zstd");
    c.args(["-d", "-q", "-f"]).arg(img).arg("-o").arg(raw);
    run_checked(c, Duration::from_secs(300)).unwrap();
}

/// The partitions of a disk image, as `sfdisk --json` shows them.
fn partitions(disk: &Path) -> Vec<serde_json::Value> {
    let mut c = Command::new("sfdisk");
    c.arg("--json").arg(disk);
    let v: serde_json::Value =
        serde_json::from_str(&run_checked(c, Duration::from_secs(30)).unwrap()).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt", "{v}");
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// The byte offset of the partition named `root`.
fn root_offset(disk: &Path) -> u64 {
    let parts = partitions(disk);
    let root = parts
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap_or_else(|| panic!("no partition named root: {parts:?}"));
    root["start"].as_u64().unwrap() * 512
}

/// Runs a debugfs request on the ext4 file system at `offset` in `disk`.
fn debugfs(disk: &Path, offset: u64, request: &str) -> String {
    let mut c = Command::new("debugfs");
    c.arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", disk.display()));
    run_checked(c, Duration::from_secs(60)).unwrap()
}

fn block_count(disk: &Path, offset: u64) -> u64 {
    let stats = debugfs(disk, offset, "stats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block count in debugfs stats:\n{stats}"))
}

/// (name, version, architecture) of every package dpkg's status file says is installed.
fn installed_packages(status: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
                .map(str::to_string)
        };
        if field("Status").as_deref() == Some("install ok installed") {
            out.insert((
                field("Package").unwrap(),
                field("Version").unwrap(),
                field("Architecture").unwrap(),
            ));
        }
    }
    out
}

/// Text without terminal escape sequences (systemd colours its status lines).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn the_base_image_builds_reproducibly_and_its_manifest_lists_every_installed_package() {
    require_tools();
    let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo();
    let agent = root.join("images/out/cosm-agent");
    assert!(
        agent.exists(),
        "{} is missing: run `make image` (`make test` does)",
        agent.display()
    );
    let dir = scratch();
    let mut images = Vec::new();
    for n in 0..2 {
        let out = dir.path().join(format!("out{n}"));
        let mut build = Command::new(root.join("images/os-image.sh"));
        build.arg(ROLE).current_dir(&root).env("IMAGE_OUT", &out);
        let started = Instant::now();
        let run = run_timeout(build, BUILD_TIMEOUT).unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "images/os-image.sh {ROLE} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        // The root file system may come from the cache; the image itself is made again.
        for step in ["ext4 ", "esp: ", "disk: ", "zstd: "] {
            assert!(
                stdout.contains(&format!("os-image {ROLE}: {step}")),
                "build {n} has no `{step}` step:\n{stdout}"
            );
        }
        let rootfs = if stdout.contains("rootfs (cached)") {
            "cached root file system"
        } else {
            "root file system installed"
        };
        println!(
            "build {n}: {:.1} s ({rootfs})",
            started.elapsed().as_secs_f64()
        );
        let manifest_path = out.join(format!("cosm-{ROLE}-bookworm.manifest.json"));
        let manifest = read_manifest(&manifest_path);
        let img = out.join(manifest["file"].as_str().unwrap());
        let sum = sha256_file(&img);
        assert_eq!(manifest["sha256"], sum.as_str(), "{}", img.display());
        assert_eq!(
            manifest["size"].as_u64(),
            Some(std::fs::metadata(&img).unwrap().len())
        );
        println!("build {n}: {} sha256 {sum}", img.display());
        images.push((img, manifest, std::fs::read(&manifest_path).unwrap()));
    }
    let (img, manifest, manifest_bytes) = &images[0];
    assert_eq!(
        images[0].1["sha256"], images[1].1["sha256"],
        "two builds of the same inputs differ"
    );
    assert_eq!(manifest_bytes, &images[1].2, "the two manifests differ");

    assert_eq!(manifest["name"], format!("cosm-{ROLE}-bookworm"));
    assert_eq!(manifest["role"], ROLE);
    assert_eq!(manifest["release"], "debian-12");
    assert_eq!(manifest["kernel"], "6.1.0-56-amd64");
    assert_eq!(manifest["source_date_epoch"], 1_700_000_000);
    assert_eq!(manifest["agent_sha256"], sha256_file(&agent).as_str());
    assert!(
        manifest["rootfs_bytes"].as_u64().unwrap() > 100 << 20,
        "{manifest}"
    );

    // The raw image: its checksum, the layout the installer relies on, and the packages.
    let raw = dir.path().join("raw.img");
    unzstd(img, &raw);
    assert_eq!(
        manifest["raw_size"].as_u64(),
        Some(std::fs::metadata(&raw).unwrap().len())
    );
    assert_eq!(manifest["raw_sha256"], sha256_file(&raw).as_str());
    let parts = partitions(&raw);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["name"], "esp");
    assert_eq!(
        parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "an EFI system partition"
    );
    assert_eq!(parts[0]["size"].as_u64(), Some(64 * 2048), "64 MiB");
    assert!(
        parts[0]["attrs"]
            .as_str()
            .unwrap_or_default()
            .contains("LegacyBIOSBootable"),
        "{:?}",
        parts[0]
    );
    assert_eq!(parts[1]["name"], "root", "root is the last partition");
    assert_eq!(
        parts[1]["uuid"].as_str().unwrap().to_lowercase(),
        manifest["root_partuuid"].as_str().unwrap()
    );
    let boot_code = std::fs::read(&raw).unwrap()[..440].to_vec();
    assert!(
        boot_code.iter().any(|b| *b != 0),
        "no BIOS boot code (gptmbr.bin) in the first 440 bytes"
    );
    let offset = root_offset(&raw);
    let status = debugfs(&raw, offset, "cat /var/lib/dpkg/status");
    let installed = installed_packages(&status);
    let listed: BTreeSet<(String, String, String)> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let sha = p["sha256"].as_str().unwrap();
            assert!(
                sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{p}"
            );
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
                p["arch"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        installed.len() > 100,
        "{} packages installed",
        installed.len()
    );
    assert_eq!(
        installed.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "installed but not in the manifest"
    );
    assert_eq!(
        listed.difference(&installed).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "in the manifest but not installed"
    );
    println!(
        "{} packages, rootfs {} bytes",
        listed.len(),
        manifest["rootfs_bytes"]
    );

    // What the installed system is made of: the agent and its unit, enabled; no per-machine
    // files (the installer writes them); no SSH host keys; DHCP on every NIC.
    let cat = |path: &str| debugfs(&raw, offset, &format!("cat {path}"));
    let agent_inside = dir.path().join("agent-inside");
    debugfs(
        &raw,
        offset,
        &format!("dump /usr/local/bin/cosm-agent {}", agent_inside.display()),
    );
    assert_eq!(sha256_file(&agent_inside), sha256_file(&agent));
    assert!(cat("/etc/systemd/system/cosm-agent.service")
        .contains("ExecStart=/usr/local/bin/cosm-agent"));
    let wants = debugfs(
        &raw,
        offset,
        "ls -l /etc/systemd/system/multi-user.target.wants",
    );
    assert!(wants.contains("cosm-agent.service"), "{wants}");
    let etc = debugfs(&raw, offset, "ls /etc");
    assert!(
        !etc.contains("cosm "),
        "/etc/cosm ships with the image: {etc}"
    );
    let ssh = debugfs(&raw, offset, "ls /etc/ssh");
    assert!(
        !ssh.contains("ssh_host_"),
        "SSH host keys in the image: {ssh}"
    );
    assert!(cat("/etc/hostname").starts_with("cosm"));
    assert!(cat("/etc/fstab").contains("x-systemd.growfs"));
    let network = cat("/etc/systemd/network/90-cosm-dhcp.network");
    assert!(
        network.contains("Name=en* eth*") && network.contains("DHCP=yes"),
        "{network}"
    );
}

#[derive(Clone, Copy, Debug)]
enum Firmware {
    Bios,
    Uefi,
}

/// The image `make os-image` built and its manifest.
fn built_image() -> (PathBuf, serde_json::Value) {
    let out = repo().join("images/out/os");
    let manifest = out.join(format!("cosm-{ROLE}-bookworm.manifest.json"));
    assert!(
        manifest.exists(),
        "{} is missing: run `make os-image` (`make test` does)",
        manifest.display()
    );
    let manifest = read_manifest(&manifest);
    (out.join(manifest["file"].as_str().unwrap()), manifest)
}

/// Sends `system_powerdown` over QEMU's QMP socket.
fn qmp_powerdown(socket: &Path) -> anyhow::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    for command in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\": \"{command}\"}}")?;
        // Events (POWERDOWN, ...) may come before the answer.
        loop {
            line.clear();
            anyhow::ensure!(reader.read_line(&mut line)? > 0, "QMP {command}: no answer");
            if line.contains("\"return\"") {
                break;
            }
            anyhow::ensure!(!line.contains("\"error\""), "QMP {command}: {line}");
        }
    }
    Ok(())
}

fn boots_and_grows(firmware: Firmware) {
    require_tools();
    let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let (img, manifest) = built_image();
    let dir = scratch();
    let disk = dir.path().join("disk.img");
    unzstd(&img, &disk);
    assert_eq!(
        manifest["raw_sha256"],
        sha256_file(&disk).as_str(),
        "{} is not the image its manifest describes",
        img.display()
    );

    // What the installer does: the disk is larger than the image; move the backup GPT to
    // the disk's end and give the root partition the rest.
    let raw_size = manifest["raw_size"].as_u64().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(raw_size + GROW_BYTES)
        .unwrap();
    let mut relocate = Command::new("sfdisk");
    relocate.args(["--relocate", "gpt-bak-std"]).arg(&disk);
    run_checked(relocate, Duration::from_secs(30)).unwrap();
    let mut grow = Command::new("sh");
    grow.arg("-c")
        .arg("echo ', +' | sfdisk -q -N 2 --no-reread --no-tell-kernel \"$1\"")
        .arg("sh")
        .arg(&disk);
    run_checked(grow, Duration::from_secs(30)).unwrap();
    let offset = root_offset(&disk);
    let parts = partitions(&disk);
    let root_sectors = parts[1]["size"].as_u64().unwrap();
    let blocks_before = block_count(&disk, offset);
    assert!(
        root_sectors * 512 / 4096 > blocks_before + (GROW_BYTES / 4096) * 9 / 10,
        "the root partition did not grow: {parts:?}"
    );

    let ns = NetNs::new("osimg").unwrap();
    let serial = dir.path().join("serial.log");
    let qmp = dir.path().join("qmp.sock");
    let mut vm = ns.command("qemu-system-x86_64");
    vm.args([
        "-accel", "tcg", "-m", "1024", "-display", "none", "-monitor", "none",
    ])
    .arg("-no-reboot");
    if let Firmware::Uefi = firmware {
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::copy(cosm_e2e::rack::OVMF_VARS, &vars).unwrap();
        vm.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                cosm_e2e::rack::OVMF_CODE
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    vm.arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        // A DHCP server (QEMU's) for systemd-networkd; nothing leaves the guest.
        .args(["-nic", "user,restrict=on,model=virtio-net-pci"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let pid = ns.spawn(vm).unwrap();
    let console = || {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&serial).unwrap_or_default(),
        ))
    };
    let mut grown_at = None;
    let agent_at = loop {
        let text = console();
        if grown_at.is_none() && text.contains(RESIZED) {
            grown_at = Some(started.elapsed());
        }
        if text.contains(AGENT_MARKER) {
            break started.elapsed();
        }
        let exited = ns.try_wait(pid).unwrap();
        if exited.is_some() || started.elapsed() > BOOT_TIMEOUT {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{firmware:?}: systemd did not start cosm-agent within {BOOT_TIMEOUT:?} \
                 (QEMU exited: {exited:?}); the console ends with:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let text = console();
    let grown_to: u64 = text
        .lines()
        .find_map(|l| l.split(RESIZED).nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{firmware:?}: the root file system was not grown:\n{text}"));
    assert!(
        grown_to > blocks_before,
        "{firmware:?}: resized to {grown_to} blocks, it had {blocks_before}"
    );
    println!(
        "{firmware:?}: cosm-agent started {:.1} s after power-on; root grown at {:.1} s \
         ({blocks_before} -> {grown_to} blocks)",
        agent_at.as_secs_f64(),
        grown_at.unwrap_or(agent_at).as_secs_f64()
    );

    // The getty on the serial console (systemd-logind, which handles the power button, is
    // up by then: a press before it is lost).
    let login_at = loop {
        if console().contains(LOGIN) {
            break started.elapsed();
        }
        if ns.try_wait(pid).unwrap().is_some() || started.elapsed() > BOOT_TIMEOUT {
            panic!(
                "{firmware:?}: no `{LOGIN}` on the serial console within {BOOT_TIMEOUT:?}:\n{}",
                console()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "{firmware:?}: login prompt on ttyS0 {:.1} s after power-on",
        login_at.as_secs_f64()
    );

    // A clean power-off (the ACPI power button, pressed again every 30 s), so what is on
    // the disk is current; then look at it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pressed = Instant::now() - Duration::from_secs(60);
    let status = loop {
        if let Some(status) = ns.try_wait(pid).unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = ns.kill(pid);
            let text = console();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{firmware:?}: the guest did not power off within 90 s of the ACPI button; \
                 the console ends with:\n{}",
                tail.join("\n")
            );
        }
        if pressed.elapsed() > Duration::from_secs(30) {
            qmp_powerdown(&qmp).unwrap();
            pressed = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "{firmware:?}: powered off {:.1} s after power-on ({status})",
        started.elapsed().as_secs_f64()
    );
    let blocks_after = block_count(&disk, offset);
    assert_eq!(
        blocks_after, grown_to,
        "{firmware:?}: the file system on disk has {blocks_after} blocks"
    );
    // Growing stops at the partition's end (less a last block group too small to add).
    let partition_blocks = root_sectors * 512 / 4096;
    assert!(
        blocks_after <= partition_blocks && blocks_after + 32768 > partition_blocks,
        "{firmware:?}: {blocks_after} blocks in a partition of {partition_blocks}"
    );
}

#[test]
fn the_base_image_boots_on_bios_to_the_agent_and_grows_its_root_file_system() {
    boots_and_grows(Firmware::Bios);
}

#[test]
fn the_base_image_boots_on_uefi_to_the_agent_and_grows_its_root_file_system() {
    boots_and_grows(Firmware::Uefi);
}

#[test]
fn terminal_escapes_are_removed() {
    assert_eq!(
        strip_ansi("[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39mcosm-agent.service\u{1b}[0m - COSM node agent."),
        "[  OK  ] Started cosm-agent.service - COSM node agent."
    );
}
