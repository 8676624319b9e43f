//! `cosm-agent install` end to end, without an appliance: a stub HTTP server in the test
//! serves a plan and a zstd GPT image the test builds (sfdisk, `mkfs.ext4 -d`), and
//! records the enrolment, progress and report calls; the disk is a loop device over a
//! sparse file bigger than the image. Runs as root (loop devices, the agent mounts the
//! root partition).

mod support;

use cosm_wire::{Enroll, Enrolled, InstallFile, InstallPlan, InstallProgress, InstallReport};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const MIB: u64 = 1 << 20;
const MAC: &str = "52:54:00:12:34:56";
const TOKEN: &str = "cosm_inst_test_token";
const IMAGE: &str = "test.img.zst";
const RAW_SIZE: u64 = 48 * MIB;
const DISK_SIZE: u64 = 256 * MIB;
const CHUNK: u64 = cosm_wire::IMAGE_CHUNK_BYTES;

/// The image the tests install.
struct Image {
    raw: Vec<u8>,
    compressed: Vec<u8>,
    /// Byte range of the ESP and the root partition in the raw image.
    esp: std::ops::Range<usize>,
    root: std::ops::Range<usize>,
    big_sha256: String,
}

/// A 48 MiB GPT image: an 8 MiB "ESP" of noise, and an ext4 root (made with
/// `mkfs.ext4 -d`) holding /etc/os-release, /etc/hostname, an empty /var/lib and 12 MiB of
/// noise in /big.bin, so the compressed image is six 4 MiB chunks with data all along.
fn build_image(dir: &Path) -> Image {
    let raw_path = dir.join("image.raw");
    sfdisk_gpt(
        &raw_path,
        RAW_SIZE,
        &[
            &format!("start=2048, size=16384, type={ESP_TYPE}, name=\"esp\"")[..],
            &format!("type={LINUX_TYPE}, name=\"root\"")[..],
        ],
    );
    let table = sfdisk_json(&raw_path);
    let part = |i: usize| {
        let p = &table["partitions"][i];
        let start = p["start"].as_u64().unwrap() as usize * 512;
        start..start + p["size"].as_u64().unwrap() as usize * 512
    };
    let (esp, root) = (part(0), part(1));

    let tree = dir.join("rootfs");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("var/lib")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "NAME=\"COSM test image\"\n").unwrap();
    std::fs::write(tree.join("etc/hostname"), "image\n").unwrap();
    let big = noise(12 * MIB as usize, 7);
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    let fs_path = dir.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&tree)
        .arg(&fs_path)
        .arg(format!("{}k", root.len() / 1024)));

    let mut raw = std::fs::read(&raw_path).unwrap();
    raw[esp.clone()].copy_from_slice(&noise(esp.len(), 3));
    let fs = std::fs::read(&fs_path).unwrap();
    assert_eq!(fs.len(), root.len());
    raw[root.clone()].copy_from_slice(&fs);
    let compressed = zstd::encode_all(&raw[..], 3).unwrap();
    Image {
        raw,
        compressed,
        esp,
        root,
        big_sha256: hex::encode(Sha256::digest(&big)),
    }
}

fn plan(image: &Image, base: &str) -> InstallPlan {
    InstallPlan {
        mac: MAC.parse().unwrap(),
        image: IMAGE.into(),
        image_url: format!("{base}/images/{IMAGE}"),
        size: image.compressed.len() as u64,
        sha256: hex::encode(Sha256::digest(&image.compressed)),
        chunk_bytes: CHUNK,
        chunks: image
            .compressed
            .chunks(CHUNK as usize)
            .map(|c| hex::encode(Sha256::digest(c)))
            .collect(),
        raw_size: image.raw.len() as u64,
        disk: None,
        root_partition: "root".into(),
        files: vec![
            InstallFile {
                path: "/etc/hostname".into(),
                mode: 0o644,
                content: "node-1\n".into(),
            },
            InstallFile {
                path: "/etc/cosm/agent.toml".into(),
                mode: 0o600,
                content: format!("appliance = \"{base}\"\nmac = \"{MAC}\"\n"),
            },
        ],
        agent_state_dir: "/var/lib/cosm-agent".into(),
        progress_every_secs: 1,
    }
}

/// What the stub appliance was sent, in order.
#[derive(Debug, Clone)]
enum Call {
    Plan,
    Image,
    Progress(InstallProgress),
    Enroll(Enroll),
    Report(InstallReport),
    /// A call without the install token, or to an unknown path.
    Refused(String),
}

/// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1 answering as the appliance
/// does for an install; stopped and joined on drop.
struct Stub {
    base: String,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Served {
    plan: Vec<u8>,
    image: Vec<u8>,
    /// Pause after each 1 MiB of the image (so a fast disk still sees several progress
    /// posts).
    pace: Duration,
}

impl Stub {
    fn start(make: impl FnOnce(&str) -> Served) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(make(&base));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (calls, stop) = (calls.clone(), stop.clone());
            std::thread::spawn(move || {
                // A thread per connection (the agent streams the image on one while it
                // posts progress on another), all joined before the stub stops.
                let mut connections = Vec::new();
                while !stop.load(Ordering::Relaxed) && connections.len() < 200 {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (served, calls) = (served.clone(), calls.clone());
                            connections.push(std::thread::spawn(move || {
                                if let Err(e) = serve(conn, &served, &calls) {
                                    eprintln!("stub: {e}");
                                }
                            }));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("stub accept: {e}"),
                    }
                }
                for c in connections {
                    let _ = c.join();
                }
            })
        };
        Stub {
            base,
            calls,
            stop,
            thread: Some(thread),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one connection (until it closes; at most 1000).
fn serve(conn: TcpStream, served: &Served, calls: &Mutex<Vec<Call>>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    for _ in 0..1000 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let (mut length, mut auth) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let authorised = auth == format!("Bearer {TOKEN}");
        let record = |c: Call| calls.lock().unwrap().push(c);
        let json = |out: &mut TcpStream, status: &str, body: &[u8]| {
            write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            out.write_all(body)
        };
        let path = target.split('?').next().unwrap_or("");
        match (method.as_str(), path) {
            ("GET", p) if p == format!("/boot/install/{MAC}") => {
                if target.ends_with(&format!("?token={TOKEN}")) {
                    record(Call::Plan);
                    json(&mut out, "200 OK", &served.plan)?;
                } else {
                    record(Call::Refused(target.clone()));
                    json(&mut out, "401 Unauthorized", b"{}")?;
                }
            }
            ("GET", p) if p == format!("/images/{IMAGE}") => {
                record(Call::Image);
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/zstd\r\nContent-Length: {}\r\n\r\n",
                    served.image.len()
                )?;
                for piece in served.image.chunks(MIB as usize) {
                    out.write_all(piece)?;
                    std::thread::sleep(served.pace);
                }
            }
            ("POST", _) if !authorised => {
                record(Call::Refused(format!("{path} with {auth:?}")));
                json(&mut out, "401 Unauthorized", b"{}")?;
            }
            ("POST", "/api/v1/agent/install-progress") => {
                record(Call::Progress(serde_json::from_slice(&body).unwrap()));
                json(&mut out, "204 No Content", b"")?;
            }
            ("POST", "/api/v1/agent/enroll") => {
                let e: Enroll = serde_json::from_slice(&body).unwrap();
                let now = cosm_wire::Timestamp::now();
                let answer = Enrolled {
                    machine: cosm_wire::Machine {
                        id: cosm_wire::MachineId(1),
                        mac: e.mac,
                        hostname: Some("node-1".into()),
                        role: None,
                        state: cosm_wire::MachineState::Deploying,
                        reserved_ip: None,
                        inventory: None,
                        created_at: now,
                        updated_at: now,
                        state_since: now,
                        lost_from: None,
                        desired_generation: 1,
                        pending_actions: Vec::new(),
                        install_round: 1,
                        discovered_by_dhcp: false,
                        awaits_installed_agent: false,
                    },
                    credential: "cosm_node_credential_1".into(),
                    heartbeat_secs: 5,
                };
                record(Call::Enroll(e));
                json(&mut out, "200 OK", &serde_json::to_vec(&answer).unwrap())?;
            }
            ("POST", "/api/v1/agent/install-report") => {
                record(Call::Report(serde_json::from_slice(&body).unwrap()));
                json(&mut out, "204 No Content", b"")?;
            }
            _ => {
                record(Call::Refused(format!("{method} {target}")));
                json(&mut out, "404 Not Found", b"{}")?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// Runs `cosm-agent install` (killed after two minutes); (exit code, output).
fn install(plan_url: &str, disk: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosm-agent"))
        .args(["install", "--plan", plan_url, "--disk"])
        .arg(disk)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cosm-agent install did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    out.push_str(&reader.join().unwrap());
    (status.code().unwrap_or(-1), out)
}

/// A sparse file of DISK_SIZE on a loop device.
fn blank_disk(dir: &Path) -> (PathBuf, LoopDevice) {
    let file = dir.join("disk.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let dev = LoopDevice::attach(&file);
    (file, dev)
}

fn read_device(dev: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// `debugfs -R <request>` on a filesystem, read-only; its stdout.
fn debugfs(dev: &Path, request: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(request).arg(dev))
}

fn prerequisites() {
    need_root();
    need("sfdisk", "fdisk");
    need("losetup", "util-linux");
    need("sgdisk", "gdisk");
    need("mkfs.ext4", "e2fsprogs");
    need("debugfs", "e2fsprogs");
    need("e2fsck", "e2fsprogs");
}

#[test]
fn an_image_is_installed_onto_a_disk() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let image = build_image(t.path());
    let planned = std::sync::OnceLock::new();
    let stub = Stub::start(|base| {
        let p = plan(&image, base);
        planned.set(p.clone()).unwrap();
        Served {
            plan: serde_json::to_vec(&p).unwrap(),
            image: image.compressed.clone(),
            pace: Duration::from_millis(250),
        }
    });
    let plan = planned.get().unwrap();
    assert!(
        plan.chunks.len() >= 5,
        "the image should span five chunks or more"
    );
    let (_file, disk) = blank_disk(t.path());

    let url = format!("{}/boot/install/{MAC}?token={TOKEN}", stub.base);
    let (code, out) = install(&url, &disk.path);
    eprintln!("{out}");
    let calls = stub.calls();
    assert_eq!(code, 0, "{out}\n{calls:#?}");

    // The calls: the plan, the image, progress, enrolment, then the report.
    let refused: Vec<&String> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Refused(what) => Some(what),
            _ => None,
        })
        .collect();
    assert!(refused.is_empty(), "refused calls: {refused:?}");
    // Progress goes out from a thread of its own, so the first "streaming 0 %" post may
    // reach the stub before the image request does; the order is among the other calls.
    let in_order: Vec<&Call> = calls
        .iter()
        .filter(|c| !matches!(c, Call::Progress(_)))
        .collect();
    assert!(
        matches!(in_order[..2], [Call::Plan, Call::Image]),
        "{calls:#?}"
    );
    let enrolled = calls.iter().position(|c| matches!(c, Call::Enroll(_)));
    let reported = calls.iter().position(|c| matches!(c, Call::Report(_)));
    assert!(
        enrolled.is_some() && enrolled < reported && reported == Some(calls.len() - 1),
        "enrol before the report, the report last: {calls:#?}"
    );
    let Some(Call::Enroll(e)) = &calls.get(enrolled.unwrap()) else {
        unreachable!()
    };
    assert_eq!(e.mac.to_string(), MAC);
    let Some(Call::Report(report)) = calls.last() else {
        unreachable!()
    };
    assert!(report.ok, "{report:?}");
    let disk_name = disk.path.display().to_string();
    for words in [
        &format!("{IMAGE} (")[..],
        "48.0 MiB raw) written to ",
        &disk_name[..],
        "MiB/s compressed",
        "MiB/s raw); partition table grown to 256.0 MiB; agent enrolled",
    ] {
        assert!(
            report.message.contains(words),
            "{words:?} not in {:?}",
            report.message
        );
    }

    // Progress: the image's total, bytes never going back, several streaming posts while
    // it streamed, then each later phase once.
    let progress: Vec<&InstallProgress> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Progress(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(progress
        .iter()
        .all(|p| p.total == plan.size && p.mac == plan.mac));
    assert!(
        progress.windows(2).all(|w| w[0].bytes <= w[1].bytes),
        "{progress:#?}"
    );
    let streaming: Vec<u64> = progress
        .iter()
        .filter(|p| p.phase == "streaming")
        .map(|p| p.bytes)
        .collect();
    assert!(
        streaming.len() >= 3 && streaming.windows(2).all(|w| w[0] < w[1]),
        "streaming posts should carry increasing bytes: {streaming:?}"
    );
    assert!(progress
        .iter()
        .any(|p| p.phase == "streaming" && p.mib_per_s > 0.0));
    let phases: Vec<&str> = progress
        .iter()
        .map(|p| p.phase.as_str())
        .filter(|p| *p != "streaming")
        .collect();
    assert_eq!(
        phases,
        ["verifying", "partitioning", "configuring", "enrolling"]
    );
    assert!(progress
        .iter()
        .filter(|p| p.phase != "streaming")
        .all(|p| p.bytes == plan.size && p.percent() == 100));

    // The disk: the image's bytes where nothing was to change, the table grown.
    let on_disk = read_device(&disk.path, image.root.start);
    assert_eq!(
        &on_disk[image.esp.clone()],
        &image.raw[image.esp.clone()],
        "the ESP as in the image"
    );
    assert_eq!(
        &on_disk[..446],
        &image.raw[..446],
        "the MBR boot code as in the image"
    );
    assert_table_valid(&disk.path);
    let table = sfdisk_json(&disk.path);
    let sectors = DISK_SIZE / 512;
    assert_eq!(table["lastlba"], sectors - 34, "{table:#}");
    let root = &table["partitions"][1];
    assert_eq!(root["name"], "root");
    assert_eq!(
        root["start"].as_u64().unwrap() + root["size"].as_u64().unwrap() - 1,
        sectors - 34,
        "root ends at the last usable LBA: {table:#}"
    );
    assert_eq!(
        root["start"].as_u64().unwrap() * 512,
        image.root.start as u64
    );

    // The installed root: the image's files, the plan's files, the credential; and a
    // clean filesystem. The agent unmounted it.
    let part = disk.partition(2);
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&part.display().to_string()),
        "the root partition is still mounted"
    );
    assert_eq!(debugfs(&part, "cat /etc/hostname"), "node-1\n");
    assert_eq!(
        debugfs(&part, "cat /etc/os-release"),
        "NAME=\"COSM test image\"\n"
    );
    assert_eq!(
        debugfs(&part, "cat /etc/cosm/agent.toml"),
        plan.files[1].content
    );
    assert!(
        debugfs(&part, "stat /etc/cosm/agent.toml").contains("Mode:  0600"),
        "{}",
        debugfs(&part, "stat /etc/cosm/agent.toml")
    );
    assert_eq!(
        debugfs(&part, "cat /var/lib/cosm-agent/credential"),
        "cosm_node_credential_1\n"
    );
    assert!(debugfs(&part, "stat /var/lib/cosm-agent/credential").contains("Mode:  0600"));
    let dumped = t.path().join("big.out");
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /big.bin {}", dumped.display()))
        .arg(&part));
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&dumped).unwrap())),
        image.big_sha256
    );
    run(Command::new("e2fsck").arg("-fn").arg(&part));
}

/// What zstd decodes from `prefix` before it runs out of input.
fn decodable_len(prefix: &[u8]) -> usize {
    let mut d = zstd::stream::read::Decoder::new(prefix).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    for _ in 0..100_000 {
        match d.read(&mut buf) {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k,
        }
    }
    panic!("zstd kept decoding");
}

#[test]
fn a_damaged_image_is_reported_and_nothing_after_the_bad_chunk_is_written() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let image = build_image(t.path());
    let planned = std::sync::OnceLock::new();
    let stub = Stub::start(|base| {
        let p = plan(&image, base);
        planned.set(p.clone()).unwrap();
        let mut damaged = image.compressed.clone();
        damaged[3 * CHUNK as usize + 12345] ^= 0x01;
        Served {
            plan: serde_json::to_vec(&p).unwrap(),
            image: damaged,
            pace: Duration::ZERO,
        }
    });
    let (_file, disk) = blank_disk(t.path());
    let url = format!("{}/boot/install/{MAC}?token={TOKEN}", stub.base);
    let (code, out) = install(&url, &disk.path);
    let calls = stub.calls();
    assert_eq!(code, 1, "{out}\n{calls:#?}");
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Enroll(_))),
        "no enrolment after a failure: {calls:#?}"
    );
    let Some(Call::Report(report)) = calls.last() else {
        panic!("no report: {calls:#?}")
    };
    assert!(!report.ok);
    let (start, end) = (3 * CHUNK, 4 * CHUNK);
    assert!(
        report.message.starts_with(&format!(
            "image chunk 3 (bytes {start}..{end} of {IMAGE}) has sha256 "
        )) && report
            .message
            .ends_with(&format!("nothing after byte {start} was written")),
        "{report:?}"
    );

    // Everything chunks 0..3 decode to may be on the disk (the agent writes in 4 MiB
    // blocks, so up to one block of it may not be), and nothing after it.
    let decoded = decodable_len(&image.compressed[..start as usize]);
    assert!(
        image.raw[decoded..].iter().any(|&b| b != 0),
        "the test needs data after the bad chunk"
    );
    let on_disk = read_device(&disk.path, RAW_SIZE as usize);
    let written = on_disk[..decoded]
        .iter()
        .zip(&image.raw[..decoded])
        .position(|(a, b)| a != b)
        .unwrap_or(decoded);
    assert!(
        written + (4 << 20) >= decoded,
        "only {written} of the {decoded} verified bytes reached the disk"
    );
    assert!(
        on_disk[written..].iter().all(|&b| b == 0),
        "bytes after the verified ones were written (from byte {written})"
    );
}
