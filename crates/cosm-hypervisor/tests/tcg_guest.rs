//! A real guest through a real libvirtd: a private daemon (its own `/run/libvirt`,
//! `/var/lib/libvirt`, `/etc/libvirt`, log and cache directories, bind-mounted in a mount
//! namespace of its own, with its own pidfile) boots the agent ramdisk's kernel and initrd
//! (`images/out`, made by `make image`) as a QEMU TCG domain, and `console_tail` shows what
//! the guest wrote to its serial port. TCG because KVM does not work on these machines.
//!
//! Needs root (mount namespaces), libvirtd (Debian package libvirt-daemon-system) and
//! `images/out/vmlinuz` + `initramfs.img`; it fails, never skips, when one is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cosm_hypervisor::{
    BootSpec, Hypervisor, LibvirtHypervisor, ShutdownOutcome, VmKind, VmName, VmPower, VmSpec,
};

/// What `/etc/libvirt/qemu.conf` gets in the private copy: QEMU's output into files (no
/// virtlogd), guests run as root with no relabelling (the scratch files stay ours).
const QEMU_CONF: &str = "\nstdio_handler = \"file\"\nuser = \"root\"\ngroup = \"root\"\n\
                         dynamic_ownership = 0\nsecurity_driver = \"none\"\n";

const MOUNTS: [(&str, &str); 5] = [
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("etc", "/etc/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// A libvirtd of our own; on drop its guests are destroyed and it is stopped by PID.
#[derive(Debug)]
struct PrivateLibvirtd {
    dir: tempfile::TempDir,
    pid: Option<u32>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Stops `pid` with SIGTERM, then SIGKILL after 10 s.
fn stop(pid: u32) {
    if !alive(pid) {
        return;
    }
    signal(pid, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, "-KILL");
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl PrivateLibvirtd {
    fn start() -> PrivateLibvirtd {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root (mount namespaces)"
        );
        let found = Command::new("sh")
            .args(["-c", "command -v libvirtd"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "libvirtd is missing: install the Debian package libvirt-daemon-system"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = PrivateLibvirtd { dir, pid: None };
        let root = fixture.dir.path().to_path_buf();
        let mut script = String::from("set -e; ");
        for (private, public) in MOUNTS {
            std::fs::create_dir_all(root.join(private)).unwrap();
            std::fs::create_dir_all(public).unwrap();
            script += &format!(
                "mount --bind '{}' '{public}'; ",
                root.join(private).display()
            );
        }
        // The host's configuration, minus its guests, networks and pools.
        run(Command::new("cp")
            .arg("-a")
            .arg("/etc/libvirt/.")
            .arg(root.join("etc")));
        run(Command::new("sh").arg("-c").arg(format!(
            "rm -f {0}/qemu/*.xml {0}/qemu/networks/autostart/* {0}/storage/autostart/*",
            root.join("etc").display()
        )));
        let qemu_conf = root.join("etc/qemu.conf");
        let mut conf = std::fs::read_to_string(&qemu_conf).unwrap_or_default();
        conf += QEMU_CONF;
        std::fs::write(&qemu_conf, conf).unwrap();

        let pidfile = root.join("libvirtd.pid");
        script += &format!("exec libvirtd -d -p '{}'", pidfile.display());
        run(Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(&script));
        let socket = root.join("run/libvirt-sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while fixture.pid.is_none() || !socket.exists() {
            fixture.pid = read_pid(&pidfile);
            assert!(
                Instant::now() < deadline,
                "libvirtd did not come up in 30 s (pid {:?}, socket {})",
                fixture.pid,
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        fixture
    }

    fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.dir.path().join("run/libvirt-sock").display()
        )
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        // Guests outlive their libvirtd, so they go first: through libvirt, then by the
        // pidfiles QEMU left, in case the daemon did not answer.
        if let Ok(hv) = LibvirtHypervisor::connect(&self.uri()) {
            for d in hv.list().unwrap_or_default() {
                if let Ok(name) = VmName::new(&d.name) {
                    let _ = hv.destroy(&name);
                }
            }
        }
        let qemu_run = self.dir.path().join("run/qemu");
        for entry in std::fs::read_dir(&qemu_run).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = read_pid(&entry.path()) {
                    stop(pid);
                }
            }
        }
        if let Some(pid) = self.pid {
            stop(pid);
        }
    }
}

fn images_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/out")
}

#[test]
fn a_tcg_guest_boots_and_its_console_is_read() {
    let (kernel, initrd) = (
        images_out().join("vmlinuz"),
        images_out().join("initramfs.img"),
    );
    for f in [&kernel, &initrd] {
        assert!(f.exists(), "{} is missing: run `make image`", f.display());
    }
    let daemon = PrivateLibvirtd::start();
    let scratch = daemon.dir.path().join("guest");
    std::fs::create_dir_all(&scratch).unwrap();
    // libvirt may chown what a guest uses; it only ever sees copies.
    std::fs::copy(&kernel, scratch.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, scratch.join("initrd.img")).unwrap();

    let marker = format!("cosm-marker-{}", std::process::id());
    let name = VmName::new("tcg-guest").unwrap();
    let mut spec = VmSpec::new(name.clone(), VmKind::Tcg, 1, 256);
    spec.boot = Some(BootSpec {
        kernel: scratch.join("vmlinuz"),
        initrd: Some(scratch.join("initrd.img")),
        // `sleep` as init keeps the guest up and, with no acpid, deaf to the power button.
        cmdline: format!("console=ttyS0 cosm.test={marker} rdinit=/bin/sleep -- 100000"),
    });
    spec.console_log = Some(scratch.join("console.log"));

    let hv = LibvirtHypervisor::connect(&daemon.uri()).unwrap();
    hv.define(&spec).unwrap();
    hv.start(&name).unwrap();
    assert_eq!(hv.state(&name).unwrap(), VmPower::Running);

    // The kernel echoes its command line (with our marker), then starts init from the initrd.
    let started = Instant::now();
    let mut tail = Vec::new();
    while started.elapsed() < Duration::from_secs(120) {
        tail = hv.console_tail(&name, 2_000).unwrap();
        let has = |s: &str| tail.iter().any(|l| l.contains(s));
        if has(&marker) && has("Run /bin/sleep as init process") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = tail.join("\n");
    assert!(
        text.contains(&marker) && text.contains("Run /bin/sleep as init process"),
        "after {:?}, no marker or init in the console:\n{text}",
        started.elapsed()
    );
    eprintln!(
        "console showed the marker and init after {:?}",
        started.elapsed()
    );

    // The guest ignores ACPI, so shutdown waits out its timeout and forces it off.
    let asked = Instant::now();
    let outcome = hv.shutdown(&name, Duration::from_secs(3)).unwrap();
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(asked.elapsed() >= Duration::from_secs(3));
    assert_eq!(hv.state(&name).unwrap(), VmPower::ShutOff);
    hv.undefine(&name).unwrap();
    assert!(hv.list().unwrap().iter().all(|d| d.name != "tcg-guest"));
}
