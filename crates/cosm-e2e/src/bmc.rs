//! BMC emulators for libvirt domains, run by a test inside its network namespace:
//! sushy-emulator (Redfish) and virtualbmc (IPMI), from the repository's `.venv` (`make
//! deps` installs them). Each owns a temporary directory and its process; Drop stops it by
//! PID (SIGTERM, then SIGKILL), virtualbmc's per-BMC children included.
//!
//! Both listen on the namespace's loopback, so two tests never share a port, and neither
//! touches the user's `~/.vbmc`: vbmcd runs with `HOME` set to its own directory, where it
//! keeps its config and each BMC's.
//!
//! [`in_netns`] runs a closure on a thread that joined a namespace: what a test needs to
//! reach those loopback listeners through the power drivers.

use crate::netns::{run_checked, NetNs, RUN_TIMEOUT};
use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an emulator may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository's `.venv/bin`.
pub fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin")
}

/// Fails unless the emulators, their libvirt binding, bcrypt and ipmitool are installed.
pub fn require_bmc_emulators() -> anyhow::Result<()> {
    for tool in ["sushy-emulator", "vbmcd", "vbmc", "python3"] {
        if !venv_bin().join(tool).exists() {
            bail!(
                "{} is missing: `make deps` installs sushy-tools, virtualbmc, libvirt-python \
                 and bcrypt into .venv",
                venv_bin().join(tool).display()
            );
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v ipmitool"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!("`ipmitool` is missing: install the Debian package ipmitool (`make deps` does)");
    }
    Ok(())
}

/// Runs `f` on a thread of its own that joined network namespace `ns` (setns), and returns
/// what it returns. Sockets `f` opens and processes it starts are in the namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<T> {
                let file =
                    std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot join {path}"))?;
                Ok(f())
            })
            .join()
    })
    .map_err(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow::anyhow!("the thread in {ns} panicked: {text}")
    })?
}

/// A child process stopped by PID: SIGTERM, then SIGKILL after 5 s; the processes it
/// started (found before the SIGTERM) are SIGKILLed if still there.
#[derive(Debug)]
struct Guarded {
    child: Child,
}

impl Guarded {
    fn stop(&mut self) {
        let pid = self.child.id();
        let descendants = crate::procs::descendants(pid);
        if let Ok(p) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in descendants {
            if let Ok(p) = i32::try_from(d) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

/// sushy-emulator serving one libvirt daemon's domains, with basic auth.
#[derive(Debug)]
pub struct SushyEmulator {
    process: Guarded,
    url: String,
    pub username: String,
    pub password: String,
    dir: tempfile::TempDir,
}

impl SushyEmulator {
    /// Starts it in `ns` on `127.0.0.1:port` for the libvirt at `libvirt_uri`, with one user
    /// (a bcrypt htpasswd file), and waits until it answers.
    pub fn start(
        ns: &NetNs,
        port: u16,
        libvirt_uri: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<SushyEmulator> {
        require_bmc_emulators()?;
        let dir = tempfile::Builder::new().prefix("cosm-sushy").tempdir()?;
        let htpasswd = dir.path().join("htpasswd");
        let mut hash = Command::new(venv_bin().join("python3"));
        hash.args([
            "-c",
            "import bcrypt, sys; sys.stdout.write(bcrypt.hashpw(sys.argv[1].encode(), \
             bcrypt.gensalt(rounds=4)).decode())",
            password,
        ]);
        let digest = run_checked(hash, RUN_TIMEOUT).context("cannot hash with bcrypt")?;
        std::fs::write(&htpasswd, format!("{username}:{digest}\n"))?;
        let config = dir.path().join("sushy.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_LIBVIRT_URI = '{libvirt_uri}'\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
                htpasswd.display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("sushy.log"))?;
        let mut cmd = ns.command(&venv_bin().join("sushy-emulator").to_string_lossy());
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("cannot start sushy-emulator")?;
        let mut sushy = SushyEmulator {
            process: Guarded { child },
            url: format!("http://127.0.0.1:{port}"),
            username: username.to_string(),
            password: password.to_string(),
            dir,
        };
        // Up when the service root answers (it needs no credentials).
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut curl = ns.command("curl");
            curl.args(["-sf", "-m", "2", &format!("{}/redfish/v1/", sushy.url)]);
            if ns.run(curl).is_ok_and(|o| o.status.success()) {
                return Ok(sushy);
            }
            if let Ok(Some(status)) = sushy.process.child.try_wait() {
                bail!("sushy-emulator exited ({status}): {}", sushy.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "sushy-emulator did not answer within {START_TIMEOUT:?}: {}",
                    sushy.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:PORT`, inside the namespace.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
}

impl Drop for SushyEmulator {
    fn drop(&mut self) {
        self.process.stop();
    }
}

/// vbmcd with one IPMI BMC per added domain.
#[derive(Debug)]
pub struct VirtualBmc {
    process: Guarded,
    home: tempfile::TempDir,
    ns_name: String,
}

impl VirtualBmc {
    /// Starts vbmcd in `ns` (its control port, 50891, on the namespace's loopback; its
    /// config under a private `HOME`) and waits until `vbmc list` works.
    pub fn start(ns: &NetNs) -> anyhow::Result<VirtualBmc> {
        require_bmc_emulators()?;
        let home = tempfile::Builder::new().prefix("cosm-vbmc").tempdir()?;
        let log = std::fs::File::create(home.path().join("vbmcd.log"))?;
        let mut cmd = ns.command(&venv_bin().join("vbmcd").to_string_lossy());
        cmd.arg("--foreground")
            .env("HOME", home.path())
            .env_remove("VIRTUALBMC_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("cannot start vbmcd")?;
        let mut vbmc = VirtualBmc {
            process: Guarded { child },
            home,
            ns_name: ns.name().to_string(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if vbmc.vbmc(&["list"]).is_ok() {
                return Ok(vbmc);
            }
            if let Ok(Some(status)) = vbmc.process.child.try_wait() {
                bail!("vbmcd exited ({status}): {}", vbmc.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "vbmcd did not answer within {START_TIMEOUT:?}: {}",
                    vbmc.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `vbmc ARGS` against this vbmcd.
    pub fn vbmc(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .arg(venv_bin().join("vbmc"))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("VIRTUALBMC_CONFIG");
        run_checked(cmd, RUN_TIMEOUT)
    }

    /// Adds and starts a BMC for `domain` on `127.0.0.1:port`.
    pub fn add(
        &self,
        domain: &str,
        port: u16,
        libvirt_uri: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        let port = port.to_string();
        self.vbmc(&[
            "add",
            domain,
            "--port",
            &port,
            "--address",
            "127.0.0.1",
            "--username",
            username,
            "--password",
            password,
            "--libvirt-uri",
            libvirt_uri,
        ])?;
        self.vbmc(&["start", domain])?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("vbmcd.log")).unwrap_or_default()
    }
}

impl Drop for VirtualBmc {
    fn drop(&mut self) {
        self.process.stop();
    }
}
