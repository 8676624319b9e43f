//! Fixtures for the end-to-end tests: the real COSM binaries, started as processes.
//!
//! Each fixture owns a temporary directory and its processes, binds loopback port 0, and
//! stops its processes by PID when dropped. Binaries come from the same target directory
//! as the test executable; `make test` builds them first.

pub mod bench;
pub mod bmc;
pub mod browser;
pub mod guest;
pub mod ha;
pub mod libvirtd;
pub mod netns;
mod procs;
pub mod rack;
pub mod sdn;
pub mod simagent;

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the running test (target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>; a binary of this
    // crate (vrack) is in target/<profile>/ itself.
    let mut dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (`make test` does this)",
        path.display()
    );
    path
}

/// A running `cosm-appliance serve` with its own data directory.
#[derive(Debug)]
pub struct Appliance {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    addr: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// The network namespace it runs in, if any; its API is then reached through
    /// `ip netns exec` (see [`Appliance::api`]).
    netns: Option<String>,
}

impl Appliance {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("appliance.toml")
    }

    /// Writes a config on loopback port 0 and starts the appliance.
    pub fn start() -> anyhow::Result<Appliance> {
        Appliance::start_with(None, "")
    }

    /// Starts the appliance inside a network namespace (or not), with more config
    /// (e.g. a `[dhcp]` section) after the data_dir and API lines.
    pub fn start_with(netns: Option<&str>, extra_config: &str) -> anyhow::Result<Appliance> {
        Appliance::start_listening(netns, "127.0.0.1:0", extra_config)
    }

    /// [`Appliance::start_with`] with the API on `api_listen` (e.g. the provisioning
    /// bridge's address, so that machines in the namespace can reach it).
    pub fn start_listening(
        netns: Option<&str>,
        api_listen: &str,
        extra_config: &str,
    ) -> anyhow::Result<Appliance> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("appliance.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = \"data\"\n[api]\nlisten = \"{api_listen}\"\n{extra_config}"),
        )?;
        let mut a = Appliance {
            dir,
            child: None,
            addr: String::new(),
            logs: Arc::default(),
            netns: netns.map(str::to_string),
        };
        a.spawn()?;
        Ok(a)
    }

    /// A command that runs in the appliance's namespace (or plainly, without one).
    pub fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// GET an API path (e.g. `/api/v1/leases`) with the admin token, through curl in the
    /// appliance's namespace, and parse the JSON answer. A list is followed page by page
    /// (its `Link` rel="next") and answered whole.
    pub fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut path = path.to_string();
        let mut all: Option<Vec<serde_json::Value>> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .command(Path::new("curl"))
                .args(["-sS", "--fail-with-body", "-m", "10", "-D", "-", "-H"])
                .arg(format!("Authorization: Bearer {}", self.token()))
                .arg(format!("{}{path}", self.url()))
                .output()
                .context("cannot run curl (Debian package curl; `make deps` installs it)")?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
            if !out.status.success() {
                bail!(
                    "GET {path} failed: {body}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_str(body)?;
            let next = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("link")
                    .then(|| next_link(v))
                    .flatten()
            });
            match (v, next) {
                (serde_json::Value::Array(page), next) => {
                    all.get_or_insert_with(Vec::new).extend(page);
                    match next {
                        Some(n) => path = n,
                        None => return Ok(serde_json::Value::Array(all.unwrap_or_default())),
                    }
                }
                (v, _) => return Ok(v),
            }
        }
        bail!("GET {path}: more than {MAX_PAGES} pages")
    }

    /// Sends `body` as JSON with `method` (POST, PUT, …) to an API path with the admin
    /// token, through curl in the appliance's namespace, and parses the JSON answer (null
    /// for an empty one). An error status fails with the API's message.
    pub fn api_send(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let out = self
            .command(Path::new("curl"))
            .args(["-sS", "--fail-with-body", "-m", "10", "-X", method])
            .args(["-H", "Content-Type: application/json", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token()))
            .arg("--data-binary")
            .arg(body.to_string())
            .arg(format!("{}{path}", self.url()))
            .output()
            .context("cannot run curl (Debian package curl; `make deps` installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{method} {path} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path} answered {text}"))
    }

    /// The `/metrics` text (open, no token), through curl in the appliance's namespace.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let out = self
            .command(Path::new("curl"))
            .args(["-sS", "--fail", "-m", "10"])
            .arg(format!("{}/metrics", self.url()))
            .output()
            .context("cannot run curl (Debian package curl; `make deps` installs it)")?;
        if !out.status.success() {
            bail!(
                "GET /metrics failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .command(&bin("cosm-appliance"))
            .args(["serve", "--log-format", "json", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start cosm-appliance")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "HTTP API listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        self.child = Some(child);
        self.logs = logs;
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                self.addr = addr;
                Ok(())
            }
            Err(_) => bail!(
                "the appliance did not start listening within 30 s; its log:\n{}",
                self.log_text()
            ),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin token the appliance wrote on its first start.
    pub fn token(&self) -> String {
        let path = self.dir.path().join("data/admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited with 0.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(false);
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("the appliance did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the appliance again on the same data directory (and a new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    /// Runs `cosmctl` against this appliance with the admin token.
    pub fn cosmctl(&self, args: &[&str]) -> Output {
        self.command(&bin("cosmctl"))
            .args(args)
            .env("COSM_URL", self.url())
            .env("COSM_TOKEN", self.token())
            .env("HOME", self.dir.path())
            .output()
            .expect("cosmctl runs")
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The most pages a list is followed for.
const MAX_PAGES: usize = 10_000;

/// The target of a `Link` header value's `rel="next"` entry (RFC 8288).
pub fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_string())
    })
}

/// Every record of a list at `base` + `path`, following each page's `Link` rel="next".
pub fn list_all(
    http: &reqwest::blocking::Client,
    base: &str,
    path: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    let mut path = path.to_string();
    for _ in 0..MAX_PAGES {
        let resp = http
            .get(format!("{base}{path}"))
            .send()?
            .error_for_status()?;
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        all.extend(resp.json::<Vec<serde_json::Value>>()?);
        match next {
            Some(n) => path = n,
            None => return Ok(all),
        }
    }
    bail!("{path}: more than {MAX_PAGES} pages")
}

/// [`list_all`] for async tests.
pub async fn list_all_async(
    http: &reqwest::Client,
    token: &str,
    base: &str,
    path: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    let mut path = path.to_string();
    for _ in 0..MAX_PAGES {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        all.extend(resp.json::<Vec<serde_json::Value>>().await?);
        match next {
            Some(n) => path = n,
            None => return Ok(all),
        }
    }
    bail!("{path}: more than {MAX_PAGES} pages")
}

/// A blocking HTTP client with the admin token set.
pub fn client(token: &str) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// Stdout of a successful command, or a panic that shows what it printed.
pub fn ok_stdout(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
