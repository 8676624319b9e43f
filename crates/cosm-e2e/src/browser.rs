//! A headless Chromium driven through WebDriver, for the web console's browser tests.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (package `chromium-driver`) on a free
//! loopback port — inside a network namespace when given one, so the browser reaches an
//! appliance listening on the namespace's bridge — and opens one session: Chromium
//! headless, `--no-sandbox` (the tests run as root), certificate errors ignored (the
//! appliance's certificate is self-signed), a 1366x900 window and a profile in a
//! temporary directory of its own.
//!
//! The WebDriver client is `fantoccini`, which is async; [`Browser`] owns a tokio runtime
//! and offers a small blocking API (goto, find by CSS, click, type, select, wait, drag,
//! screenshot), so browser tests stay synchronous like the other end-to-end tests. Every
//! wait is bounded.
//!
//! The client reaches a chromedriver inside a namespace through sockets opened by a thread
//! that joined it ([`crate::bmc::in_netns`]); nothing is routed into the namespace.
//!
//! Dropping a [`Browser`] ends the session, then stops chromedriver and every Chromium
//! process it started by PID (found from /proc: chromedriver's descendants, and any
//! process still naming the session's private profile directory), never by name.
//!
//! It must not skip: when `chromedriver` or `chromium` is missing, [`Browser::start`] fails
//! naming the Debian packages to install.

use anyhow::{anyhow, bail, Context};
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's packages put the two binaries.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long chromedriver may take to answer its status endpoint after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Browser::wait_for`] and its kind look again.
const POLL: Duration = Duration::from_millis(100);

/// The window: a 1366-pixel-wide laptop screen, with room below the fold.
pub const WINDOW: (u32, u32) = (1366, 900);

/// Fails unless Debian's `chromium` and `chromium-driver` are installed.
pub fn require_chromium() -> anyhow::Result<()> {
    for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
        if !Path::new(path).exists() {
            bail!(
                "{path} is missing: install the Debian packages chromium and chromium-driver \
                 (`apt-get install chromium chromium-driver`; `make deps` does) — the {package} \
                 package provides it"
            );
        }
    }
    Ok(())
}

/// A headless Chromium session through chromedriver; stopped by PID on drop.
#[derive(Debug)]
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Option<Child>,
    /// The Chromium profile and chromedriver's log.
    dir: tempfile::TempDir,
}

/// Opens TCP connections for the WebDriver client, inside a network namespace when given
/// one (chromedriver listens on that namespace's loopback).
#[derive(Debug, Clone)]
struct NetnsConnector {
    netns: Option<String>,
}

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>>> + Send,
    >,
>;

impl tower::Service<http::Uri> for NetnsConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let netns = self.netns.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream =
                tokio::task::spawn_blocking(move || connect_in(netns.as_deref(), &host, port))
                    .await
                    .map_err(std::io::Error::other)??;
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::from_std(stream)?,
            ))
        })
    }
}

/// A TCP connection to `host:port`, opened inside `netns` when given.
fn connect_in(netns: Option<&str>, host: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    let connect = || std::net::TcpStream::connect((host, port));
    match netns {
        None => connect(),
        Some(ns) => crate::bmc::in_netns(ns, connect).map_err(std::io::Error::other)?,
    }
}

/// A loopback port that was free a moment ago (in `netns` when given).
fn free_port(netns: Option<&str>) -> anyhow::Result<u16> {
    let pick = || -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    Ok(match netns {
        None => pick()?,
        Some(ns) => crate::bmc::in_netns(ns, pick)??,
    })
}

impl Browser {
    /// Starts chromedriver on the host's loopback and opens a session.
    pub fn start() -> anyhow::Result<Browser> {
        Browser::start_in(None)
    }

    /// Starts chromedriver (and so Chromium) inside network namespace `netns` when given,
    /// and opens a session.
    pub fn start_in(netns: Option<&str>) -> anyhow::Result<Browser> {
        require_chromium()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot build the browser's tokio runtime")?;
        let dir = tempfile::Builder::new()
            .prefix("cosm-browser-")
            .tempdir()
            .context("cannot create the browser's temporary directory")?;
        let port = free_port(netns)?;
        let log = dir.path().join("chromedriver.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CHROMEDRIVER]);
                c
            }
            None => Command::new(CHROMEDRIVER),
        };
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver = cmd.spawn().context("cannot start chromedriver")?;
        let mut browser = Browser {
            rt,
            client: None,
            driver: Some(driver),
            dir,
        };
        browser.connect(netns, port)?;
        Ok(browser)
    }

    /// Waits for chromedriver to listen, then opens the session.
    fn connect(&mut self, netns: Option<&str>, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if connect_in(netns, "127.0.0.1", port).is_ok() {
                break;
            }
            if let Some(driver) = self.driver.as_mut() {
                if let Some(status) = driver.try_wait()? {
                    bail!(
                        "chromedriver exited ({status}) before it listened; its log:\n{}",
                        self.driver_log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver did not listen on port {port} within {START_TIMEOUT:?}; its log:\n{}",
                    self.driver_log()
                );
            }
            std::thread::sleep(POLL);
        }
        let profile = self.dir.path().join("profile");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--ignore-certificate-errors",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", profile.display()),
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-sync",
                    "--password-store=basic",
                    "--lang=en-US",
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        let connector = NetnsConnector {
            netns: netns.map(str::to_string),
        };
        let url = format!("http://127.0.0.1:{port}");
        // A chromedriver that has just started listening may drop the first requests (and on
        // a loaded machine Chromium is slow to start): try again until the deadline, as long
        // as chromedriver runs.
        let builder = {
            let mut b = ClientBuilder::new(connector);
            b.capabilities(caps);
            b
        };
        let deadline = Instant::now() + START_TIMEOUT * 2;
        let client = loop {
            let attempt = self
                .rt
                .block_on(async {
                    tokio::time::timeout(START_TIMEOUT, builder.connect(&url)).await
                })
                .map_err(|_| anyhow!("no WebDriver session within {START_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|e| anyhow!("{e}")));
            match attempt {
                Ok(client) => break client,
                Err(e) => {
                    let exited = match self.driver.as_mut() {
                        Some(d) => d.try_wait()?.is_some(),
                        None => true,
                    };
                    if exited || Instant::now() > deadline {
                        return Err(e).with_context(|| {
                            format!(
                                "cannot open a Chromium session; chromedriver's log:\n{}",
                                self.driver_log()
                            )
                        });
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        };
        self.client = Some(client);
        // The window size flag applies to the first window; set it through WebDriver too, so
        // the viewport is the same whatever Chromium's version does with the flag.
        let c = self.client()?.clone();
        self.block(c.set_window_size(WINDOW.0, WINDOW.1))?;
        Ok(())
    }

    /// The last lines of chromedriver's log (for error messages).
    pub fn driver_log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| anyhow!("the browser session is closed"))
    }

    /// Runs a WebDriver command to completion on the runtime.
    fn block<T>(
        &self,
        f: impl Future<Output = Result<T, fantoccini::error::CmdError>>,
    ) -> anyhow::Result<T> {
        self.rt.block_on(f).map_err(|e| anyhow!("WebDriver: {e}"))
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        let c = self.client()?.clone();
        self.block(c.goto(url))
            .with_context(|| format!("cannot open {url}"))
    }

    /// The current URL.
    pub fn current_url(&self) -> anyhow::Result<String> {
        let c = self.client()?.clone();
        Ok(self.block(c.current_url())?.to_string())
    }

    /// The first element matching `css`, now (no waiting).
    pub fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let c = self.client()?.clone();
        self.block(c.find(Locator::Css(css)))
            .with_context(|| format!("no element matches {css}"))
    }

    /// Every element matching `css`, now.
    pub fn find_all(&self, css: &str) -> anyhow::Result<Vec<fantoccini::elements::Element>> {
        let c = self.client()?.clone();
        self.block(c.find_all(Locator::Css(css)))
    }

    /// Whether some element matches `css` now.
    pub fn exists(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.find_all(css)?.is_empty())
    }

    /// Waits (polling, at most `timeout`) until an element matches `css`, and returns it.
    pub fn wait_for(
        &self,
        css: &str,
        timeout: Duration,
    ) -> anyhow::Result<fantoccini::elements::Element> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css)?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!(
                    "no element matched {css} within {timeout:?} (page {})",
                    self.current_url().unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (polling, at most `timeout`) until no element matches `css`.
    pub fn wait_gone(&self, css: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.exists(css)? {
            if Instant::now() > deadline {
                bail!("{css} still there after {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Waits (polling, at most `timeout`) until the text of the first element matching
    /// `css` contains `needle`; returns that text.
    pub fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(e) = self.find_all(css)?.into_iter().next() {
                last = self.block(e.text())?;
                if last.contains(needle) {
                    return Ok(last);
                }
            }
            if Instant::now() > deadline {
                bail!("{css} did not come to contain {needle:?} within {timeout:?}; its text: {last:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.find(css)?;
        self.block(e.click())
            .with_context(|| format!("cannot click {css}"))
    }

    /// Clears the input matching `css` and types `text` into it.
    pub fn type_text(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let e = self.find(css)?;
        self.block(e.clear())
            .with_context(|| format!("cannot clear {css}"))?;
        self.block(e.send_keys(text))
            .with_context(|| format!("cannot type into {css}"))
    }

    /// Chooses the option whose value is `value` in the `<select>` matching `css`.
    pub fn select_option(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let e = self.find(css)?;
        self.block(e.select_by_value(value))
            .with_context(|| format!("{css} has no option {value:?}"))
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let e = self.find(css)?;
        self.block(e.text())
    }

    /// The current value (the `value` property) of the form control matching `css`.
    pub fn value(&self, css: &str) -> anyhow::Result<String> {
        let e = self.find(css)?;
        Ok(self.block(e.prop("value"))?.unwrap_or_default())
    }

    /// An attribute of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        let e = self.find(css)?;
        self.block(e.attr(name))
    }

    /// Runs `script` in the page (its arguments are `arguments[0..]`) and returns its value.
    pub fn execute(
        &self,
        script: &str,
        args: Vec<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let c = self.client()?.clone();
        self.block(c.execute(script, args))
    }

    /// Drags the element matching `from_css` onto the one matching `to_css` with pointer
    /// actions (press, move in steps, release), as a user's mouse would: what a console
    /// built on pointer events sees. (The HTML5 drag-and-drop API cannot be driven this way;
    /// the console does not use it.)
    pub fn drag(&self, from_css: &str, to_css: &str) -> anyhow::Result<()> {
        let from = self.find(from_css)?;
        let to = self.find(to_css)?;
        let step = Some(Duration::from_millis(50));
        let mouse = MouseActions::new("mouse".to_string())
            .then(PointerAction::MoveToElement {
                element: from,
                duration: None,
                x: 0.0,
                y: 0.0,
            })
            .then(PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Pause {
                duration: Duration::from_millis(100),
            })
            // A few small moves first: a drag starts only past a threshold.
            .then(PointerAction::MoveBy {
                duration: step,
                x: 5.0,
                y: 5.0,
            })
            .then(PointerAction::MoveBy {
                duration: step,
                x: 10.0,
                y: 10.0,
            })
            .then(PointerAction::MoveToElement {
                element: to.clone(),
                duration: Some(Duration::from_millis(300)),
                x: 0.0,
                y: 0.0,
            })
            .then(PointerAction::MoveToElement {
                element: to,
                duration: step,
                x: 2.0,
                y: 2.0,
            })
            .then(PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            });
        let c = self.client()?.clone();
        self.block(c.perform_actions(mouse))
            .with_context(|| format!("cannot drag {from_css} to {to_css}"))?;
        self.block(c.release_actions())
    }

    /// Saves a PNG of the viewport at `path` (its directory is created).
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let c = self.client()?.clone();
        let png = self.block(c.screenshot())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The session's private directory (profile, chromedriver log).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Ends the session, then stops chromedriver and Chromium by PID.
    pub fn stop(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing the session quits Chromium; bounded, as a stuck browser must not hang
            // the test's teardown (the PIDs are killed below either way).
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        let marker = self.dir.path().to_string_lossy().into_owned();
        let mut pids = crate::procs::descendants(driver.id());
        pids.extend(processes_naming(&marker));
        if let Ok(p) = i32::try_from(driver.id()) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = driver.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = driver.kill();
        let _ = driver.wait();
        // Chromium's processes left behind (reparented once chromedriver is gone).
        pids.extend(processes_naming(&marker));
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process whose command line contains `marker` (a session's unique temporary
/// directory: only that session's Chromium processes name it).
fn processes_naming(marker: &str) -> Vec<u32> {
    crate::procs::process_table()
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .filter(|pid| *pid != std::process::id())
        .collect()
}
