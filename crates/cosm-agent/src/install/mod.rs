//! `cosm-agent install`: installs this machine from an image, in the agent ramdisk
//! (issue 16; the contract is `cosm_wire::install`).
//!
//! The steps, each its own module so each can be tested alone:
//!
//! 1. fetch the [`InstallPlan`] from the URL on the kernel line (`cosm.install=`), whose
//!    `token` parameter is the machine's install token — the bearer of every later call;
//! 2. choose the disk ([`disk`]) and open it exclusively;
//! 3. stream the image onto it, every chunk's sha256 checked before a byte decoded from it
//!    is written ([`stream`]), posting [`progress`];
//! 4. grow the partition table to the disk and extend the root partition ([`gpt`]), make
//!    the kernel read it ([`disk::reread_partitions`]);
//! 5. mount the root, write the plan's files, enrol the installed agent with the install
//!    token and store its credential in the root ([`configure`]), unmount;
//! 6. report the outcome ([`InstallReport`]). Enrolment comes first: the install token
//!    dies with the report.
//!
//! The agent never retries a failed install: it reports the failure, and the ramdisk's
//! `/init` reboots the machine either way.

pub mod configure;
pub mod disk;
pub mod gpt;
pub mod progress;
pub mod stream;

use crate::enrolment::{stored_credential, Enroller};
use anyhow::{bail, Context};
use cosm_wire::{human_bytes, valid_install_path, InstallPlan, InstallReport, MacAddr};
use progress::{mib_per_s, Progress};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `cosm-agent install` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The plan's URL, with `?token=<install token>`.
    pub plan_url: String,
    /// Write this disk instead of the plan's or the first large enough (`--disk`).
    pub disk: Option<PathBuf>,
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
    /// Where device nodes are (`/dev`).
    pub dev: PathBuf,
    /// The root the enrolment's inventory is read from (`/`).
    pub inventory_root: PathBuf,
}

impl Options {
    pub fn new(plan_url: String) -> Options {
        Options {
            plan_url,
            disk: None,
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            inventory_root: PathBuf::from("/"),
        }
    }
}

/// How an install ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Installed, and the appliance was told.
    Installed(String),
    /// Installed, but the report could not be delivered (the appliance still thinks the
    /// machine is deploying).
    Unreported(String),
    /// Failed (reported if it could be).
    Failed(String),
}

impl Outcome {
    /// The process exit status: 0 installed and reported, 1 failed, 2 installed but not
    /// reported.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Installed(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::Unreported(_) => 2,
        }
    }
}

/// Where the plan is and what the install calls carry, from the plan URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSource {
    pub url: String,
    /// The appliance's base URL (the plan URL's origin).
    pub appliance: String,
    /// The install token (the `token` query parameter).
    pub token: String,
    /// The MAC in the URL's last path segment, if it is one: where a failure to fetch the
    /// plan is reported.
    pub mac: Option<MacAddr>,
}

impl PlanSource {
    /// The plan URL without its query (the token), for messages.
    pub fn redacted(&self) -> String {
        match self.url.split_once('?') {
            Some((path, _)) => format!("{path}?token=…"),
            None => self.url.clone(),
        }
    }
}

/// Reads `http://APPLIANCE/boot/install/<mac>?token=<install token>`.
pub fn parse_plan_url(url: &str) -> anyhow::Result<PlanSource> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("plan URL {url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("plan URL {url:?}: http or https only");
    }
    let token = parsed
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!("plan URL {url:?} has no token= parameter (the machine's install token)")
        })?;
    let mac = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(|m| m.parse().ok());
    Ok(PlanSource {
        url: url.to_string(),
        appliance: parsed.origin().ascii_serialization(),
        token,
        mac,
    })
}

/// The largest chunk the agent holds in memory (the contract's is 4 MiB).
const MAX_CHUNK_BYTES: u64 = 64 << 20;

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a plan's internal consistency before anything is written.
pub fn check_plan(plan: &InstallPlan) -> anyhow::Result<()> {
    if !(4096..=MAX_CHUNK_BYTES).contains(&plan.chunk_bytes) {
        bail!(
            "the plan's chunk size {} is outside 4096..={MAX_CHUNK_BYTES}",
            plan.chunk_bytes
        );
    }
    if plan.size == 0 || plan.raw_size == 0 {
        bail!(
            "the plan's image is empty (size {}, raw size {})",
            plan.size,
            plan.raw_size
        );
    }
    let chunks = plan.size.div_ceil(plan.chunk_bytes);
    if plan.chunks.len() as u64 != chunks {
        bail!(
            "the plan lists {} chunk hashes for {} bytes in chunks of {}: {chunks} expected",
            plan.chunks.len(),
            plan.size,
            plan.chunk_bytes
        );
    }
    if let Some((i, _)) = plan
        .chunks
        .iter()
        .enumerate()
        .find(|(_, h)| !is_sha256_hex(h))
    {
        bail!("the plan's hash of chunk {i} is not a lowercase hex sha256");
    }
    if !is_sha256_hex(&plan.sha256) {
        bail!("the plan's image sha256 is not a lowercase hex sha256");
    }
    if plan.root_partition.is_empty() {
        bail!("the plan names no root partition");
    }
    if !valid_install_path(&plan.agent_state_dir) {
        bail!(
            "the plan's agent state directory {:?} is not an absolute path without . or ..",
            plan.agent_state_dir
        );
    }
    if let Some(f) = plan.files.iter().find(|f| !valid_install_path(&f.path)) {
        bail!(
            "the plan's file path {:?} is not an absolute path without . or ..",
            f.path
        );
    }
    Ok(())
}

/// Runs an install to its end and reports it; logs each step on stderr.
pub fn run(opts: &Options) -> Outcome {
    let src = match parse_plan_url(&opts.plan_url) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let http = match reqwest::blocking::Client::builder()
        // Per read, for bodies: a stream that stalls this long fails.
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot build the HTTP client: {e}")),
    };
    eprintln!("install: fetching the plan from {}", src.appliance);
    let plan = match fetch_plan(&http, &src).and_then(|p| check_plan(&p).map(|()| p)) {
        Ok(p) => p,
        Err(e) => {
            let message = format!("install plan: {e:#}");
            eprintln!("install: {message}");
            if let Some(mac) = src.mac {
                // The machine may not be deploying yet; this is the best the appliance
                // can be told.
                let _ = report(&http, &src, mac, false, &message);
            }
            return Outcome::Failed(message);
        }
    };
    let mut progress = Progress::new(
        http.clone(),
        &src.appliance,
        &src.token,
        plan.mac,
        plan.size,
        Duration::from_secs(plan.progress_every_secs.max(1).into()),
    );
    let result = install(opts, &src, &plan, &http, &mut progress);
    progress.finish(Duration::from_secs(6));
    let (ok, message) = match result {
        Ok(m) => (true, m),
        Err(e) => (false, format!("{e:#}")),
    };
    eprintln!("install: {}: {message}", if ok { "done" } else { "FAILED" });
    match (report(&http, &src, plan.mac, ok, &message), ok) {
        (Ok(()), true) => Outcome::Installed(message),
        (Err(e), true) => {
            eprintln!("install: the report could not be delivered: {e:#}");
            Outcome::Unreported(message)
        }
        (r, false) => {
            if let Err(e) = r {
                eprintln!("install: the report could not be delivered: {e:#}");
            }
            Outcome::Failed(message)
        }
    }
}

/// Whether an HTTP failure is worth another try: no answer, or a server error.
fn retryable(e: &reqwest::Error) -> bool {
    e.status().is_none_or(|s| s.is_server_error())
}

fn fetch_plan(http: &reqwest::blocking::Client, src: &PlanSource) -> anyhow::Result<InstallPlan> {
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        let got = http
            .get(&src.url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<InstallPlan>());
        match got {
            Ok(p) => return Ok(p),
            Err(e) if attempt < 5 && retryable(&e) && !e.is_decode() => {
                // Without the URL: it carries the install token.
                eprintln!(
                    "install: the plan: {}; trying again in {} s",
                    e.without_url(),
                    pause.as_secs()
                );
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e.without_url())
                    .context(format!("GET {} failed", src.redacted())))
            }
        }
    }
}

/// Posts the report, a few times if the appliance does not answer.
fn report(
    http: &reqwest::blocking::Client,
    src: &PlanSource,
    mac: MacAddr,
    ok: bool,
    message: &str,
) -> anyhow::Result<()> {
    let body = InstallReport {
        mac,
        ok,
        message: message.to_string(),
    };
    let url = format!("{}/api/v1/agent/install-report", src.appliance);
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        let sent = http
            .post(&url)
            .bearer_auth(&src.token)
            .json(&body)
            .send()
            .and_then(|r| r.error_for_status());
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 && retryable(&e) => {
                eprintln!(
                    "install: the report: {e}; trying again in {} s",
                    pause.as_secs()
                );
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The install itself; the report's message on success.
fn install(
    opts: &Options,
    src: &PlanSource,
    plan: &InstallPlan,
    http: &reqwest::blocking::Client,
    progress: &mut Progress,
) -> anyhow::Result<String> {
    let disk = match &opts.disk {
        Some(path) => disk::from_path(&opts.sys, path, plan.raw_size)?,
        None => disk::choose(&opts.sys, &opts.dev, plan.disk.as_deref(), plan.raw_size)?,
    };
    eprintln!(
        "install: writing {} ({}, {} raw) to {} ({})",
        plan.image,
        human_bytes(plan.size),
        human_bytes(plan.raw_size),
        disk.path.display(),
        human_bytes(disk.size)
    );
    // Exclusive: the kernel refuses it while a partition of the disk is mounted or the
    // disk is otherwise held, so a disk in use is never overwritten.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(&disk.path)
        .with_context(|| {
            format!(
                "cannot open {} exclusively for writing (a mounted partition or another user \
                 holds it)",
                disk.path.display()
            )
        })?;

    // Stream.
    progress.start();
    progress.update(progress::STREAMING, 0);
    let mut get = http.get(&plan.image_url);
    // The install token goes only to the appliance, not to a mirror the plan might name.
    if reqwest::Url::parse(&plan.image_url)
        .is_ok_and(|u| u.origin().ascii_serialization() == src.appliance)
    {
        get = get.bearer_auth(&src.token);
    }
    let started = Instant::now();
    let response = get.send().and_then(|r| r.error_for_status()).map_err(|e| {
        anyhow::anyhow!(
            "GET {} failed before byte 0 of {}: {}; nothing was written",
            plan.image_url,
            plan.size,
            e.without_url()
        )
    })?;
    let sink = stream::BlockWriter::new(&mut file, 4 << 20);
    let (streamed, sink) = stream::stream_image(plan, response, sink, &mut |bytes| {
        progress.update(progress::STREAMING, bytes)
    })?;
    progress.update(progress::VERIFYING, streamed.compressed);
    let (_, zeroed) = sink.finish().map_err(|source| stream::StreamError::Write {
        at: plan.raw_size,
        source,
    })?;
    file.sync_all()
        .with_context(|| format!("cannot flush {} (fsync)", disk.path.display()))?;
    let elapsed = started.elapsed();
    let written = format!(
        "{} ({}, {} raw) written to {} in {:.1} s ({:.1} MiB/s compressed, {:.1} MiB/s raw)",
        plan.image,
        human_bytes(plan.size),
        human_bytes(plan.raw_size),
        disk.path.display(),
        elapsed.as_secs_f64(),
        mib_per_s(streamed.compressed, elapsed),
        mib_per_s(streamed.raw, elapsed),
    );
    eprintln!(
        "install: {written}; {} of zero blocks zeroed rather than written",
        human_bytes(zeroed)
    );

    // Partition table.
    progress.update(progress::PARTITIONING, streamed.compressed);
    let grown = gpt::grow(&mut file, disk.sector, &plan.root_partition)
        .with_context(|| format!("growing the partition table of {}", disk.path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot flush {} (fsync)", disk.path.display()))?;
    drop(file);
    eprintln!(
        "install: partition {} ({}) grown from {} to {}",
        grown.number,
        plan.root_partition,
        human_bytes((grown.old_last_lba - grown.first_lba + 1) * grown.sector),
        human_bytes(grown.partition_bytes())
    );
    let node = kernel_partition(opts, &disk, &grown)?;

    // The installed system.
    progress.update(progress::CONFIGURING, streamed.compressed);
    let root = configure::Mounted::ext4(&node)?;
    configure::write_files(root.root(), &plan.files)?;
    eprintln!(
        "install: {} files written into {}",
        plan.files.len(),
        node.display()
    );
    progress.update(progress::ENROLLING, streamed.compressed);
    enrol(root.root(), plan, src, http, &opts.inventory_root)?;
    root.unmount()?;
    nix::unistd::sync();
    Ok(format!(
        "{written}; partition table grown to {}; agent enrolled",
        human_bytes(disk.size)
    ))
}

/// Makes the kernel see the grown table and returns the root partition's device node.
/// BLKRRPART first; a kernel that reads no GPT finds no partition there, and is told about
/// the root partition with BLKPG instead. Either way the kernel's size for it must be the
/// grown one.
fn kernel_partition(
    opts: &Options,
    disk: &disk::Disk,
    grown: &gpt::Grown,
) -> anyhow::Result<PathBuf> {
    disk::reread_partitions(&disk.path, Duration::from_secs(10))?;
    let wait = |secs| {
        disk::wait_for_partition(
            &opts.sys,
            &opts.dev,
            &disk.name,
            grown.number,
            Duration::from_secs(secs),
        )
    };
    let node = match wait(3) {
        Ok(node) => node,
        Err(_) => {
            eprintln!(
                "install: the kernel found no partition {} on {} (a kernel without GPT \
                 support?); adding it with BLKPG",
                grown.number,
                disk.path.display()
            );
            disk::add_partition(
                &disk.path,
                grown.number,
                grown.first_lba * grown.sector,
                grown.partition_bytes(),
            )?;
            wait(10)?
        }
    };
    let name = node
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let seen = disk::partition_size(&opts.sys, &disk.name, name);
    if seen != Some(grown.partition_bytes()) {
        bail!(
            "the kernel sees {} with {} bytes, the grown table says {}",
            node.display(),
            seen.map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            grown.partition_bytes()
        );
    }
    Ok(node)
}

/// Enrols the installed system's agent with the install token and stores its credential
/// in `root` + the plan's state directory, as `enrolment::credential_path` names it.
fn enrol(
    root: &Path,
    plan: &InstallPlan,
    src: &PlanSource,
    http: &reqwest::blocking::Client,
    inventory_root: &Path,
) -> anyhow::Result<()> {
    // Made (or checked) without following symlinks; the credential is then written there
    // as a new file renamed into place, which follows none either.
    let state_dir = configure::make_dirs(root, &plan.agent_state_dir)?;
    let settings = crate::settings::Settings {
        appliance: src.appliance.clone(),
        token: Some(src.token.clone()),
        mac: Some(plan.mac),
        state_dir: state_dir.clone(),
        hypervisor: None,
        migration_uri: None,
        vtep_ip: None,
        vtep_dev: None,
    };
    let enroller = Enroller::new(
        http.clone(),
        &settings,
        plan.mac,
        inventory_root.to_path_buf(),
        None,
    );
    enroller
        .enroll()
        .context("enrolling the installed system's agent with the install token")?;
    if stored_credential(&state_dir).is_none()
        || stored_credential(&state_dir) != enroller.credential()
    {
        bail!(
            "enrolled, but the credential could not be stored in {} of the installed system",
            plan.agent_state_dir
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_url_carries_the_appliance_the_token_and_the_mac() {
        let s = parse_plan_url(
            "http://192.0.2.1:8080/boot/install/52:54:00:12:34:56?token=cosm_inst_abc",
        )
        .unwrap();
        assert_eq!(s.appliance, "http://192.0.2.1:8080");
        assert_eq!(s.token, "cosm_inst_abc");
        assert_eq!(s.mac, Some("52:54:00:12:34:56".parse().unwrap()));
        let s = parse_plan_url("https://cosm.example/boot/install/x?a=1&token=t").unwrap();
        assert_eq!(
            (s.appliance.as_str(), s.mac),
            ("https://cosm.example", None)
        );
        for bad in [
            "http://192.0.2.1/boot/install/52:54:00:12:34:56",
            "http://192.0.2.1/boot/install/x?token=",
            "ftp://192.0.2.1/x?token=t",
            "not a url",
        ] {
            assert!(parse_plan_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inconsistent_plans_are_refused_before_anything_is_written() {
        let z = vec![7u8; 10_000];
        let good = stream::tests::plan_for(&z, 1 << 20, 4096);
        check_plan(&good).unwrap();
        let mut p = good.clone();
        p.chunks.pop();
        assert!(check_plan(&p)
            .unwrap_err()
            .to_string()
            .contains("2 chunk hashes"));
        let mut p = good.clone();
        p.chunk_bytes = 1 << 30;
        assert!(check_plan(&p).is_err());
        let mut p = good.clone();
        p.chunks[1] = p.chunks[1].to_uppercase();
        assert!(check_plan(&p).unwrap_err().to_string().contains("chunk 1"));
        let mut p = good.clone();
        p.agent_state_dir = "/var/../etc".into();
        assert!(check_plan(&p).is_err());
        let mut p = good.clone();
        p.files.push(cosm_wire::InstallFile {
            path: "/etc/../../x".into(),
            mode: 0o644,
            content: String::new(),
        });
        assert!(check_plan(&p)
            .unwrap_err()
            .to_string()
            .contains("/etc/../../x"));
    }
}
