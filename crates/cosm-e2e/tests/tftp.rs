//! TFTP with real clients, in a network namespace of its own: the appliance serves its
//! boot directory on port 69 and `atftp` (and a PXE-like client in Python, for the abort
//! after the tsize probe) talk to it.

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(extra: &str) -> (NetNs, Appliance, PathBuf) {
    require_root_tools(&["ip", "atftp", "python3", "curl"]);
    let ns = NetNs::new("tftp").unwrap();
    let app = Appliance::start_with(Some(ns.name()), &format!("[tftp]\n{extra}")).unwrap();
    let root = app.dir.path().join("data/boot");
    assert!(
        root.is_dir(),
        "the appliance did not create its boot directory"
    );
    (ns, app, root)
}

fn metric(app: &Appliance, name: &str) -> u64 {
    let text = app.metrics().unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

fn atftp(ns: &NetNs, remote: &str, local: &Path, options: &[&str]) -> std::process::Output {
    let mut c = ns.command("atftp");
    c.args(["--get", "-r", remote, "-l"]).arg(local);
    for o in options {
        c.args(["--option", o]);
    }
    c.args(["127.0.0.1", "69"]);
    ns.run_timeout(c, Duration::from_secs(60)).unwrap()
}

/// Waits (10 s at most) until the appliance holds no TFTP transfer: a client is done when it
/// sent its last ACK, and the server counts the transfer's end when that ACK arrives.
fn wait_until_no_transfer_is_held(app: &Appliance) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(app, "cosm_tftp_active_transfers") != 0 {
        assert!(Instant::now() < deadline, "a transfer is still held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PXE ROM asks for the size first (RRQ with tsize=0), gets the OACK, and aborts with
/// ERROR 8; then it asks again from the same port. The aborted transfer must end at
/// once: the server's retransmission timeout here is 60 s with 100 retries, so a server
/// that ignored the ERROR would hold the first transfer (and refuse the second RRQ from
/// the same address) for well over the 20 s this client waits.
#[test]
fn a_client_that_aborts_after_the_tsize_probe_does_not_hold_a_transfer() {
    let (ns, app, root) = start("timeout_ms = 60000\nmax_send_retries = 100\n");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(root.join("probe.bin"), &payload).unwrap();
    let script = app.dir.path().join("pxe_probe.py");
    std::fs::write(
        &script,
        r#"import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(2)
srv = ("127.0.0.1", 69)
def rrq(opts):
    body = b"probe.bin\0octet\0" + b"".join(k + b"\0" + v + b"\0" for k, v in opts)
    s.sendto(struct.pack("!H", 1) + body, srv)
# 1: the size probe, answered by an OACK from the transfer's own port
rrq([(b"tsize", b"0"), (b"blksize", b"1432")])
data, tid = s.recvfrom(65536)
op = struct.unpack("!H", data[:2])[0]
assert op == 6, "expected OACK, got opcode %d" % op
opts = data[2:].split(b"\0")
tsize = int(opts[opts.index(b"tsize") + 1])
print("tsize", tsize, flush=True)
# 2: abort, as PXE ROMs do (ERROR 8: option negotiation)
s.sendto(struct.pack("!HH", 5, 8) + b"tsize probe done\0", tid)
# 3: the real transfer, from the same port
got = b""
deadline = time.time() + 20
rrq([(b"blksize", b"1432")])
expect, tid2 = 1, None
while time.time() < deadline:
    try:
        data, peer = s.recvfrom(65536)
    except socket.timeout:
        if tid2 is None:
            rrq([(b"blksize", b"1432")])
        continue
    op = struct.unpack("!H", data[:2])[0]
    if peer == tid:
        if op == 5:
            sys.exit("the aborted transfer answered our ERROR with an ERROR")
        continue  # a late retransmission of the aborted transfer
    if op == 6:
        tid2 = peer
        s.sendto(struct.pack("!HH", 4, 0), peer)
        continue
    if op == 5:
        sys.exit("ERROR from server: %r" % data)
    assert op == 3, op
    tid2 = peer
    block = struct.unpack("!H", data[2:4])[0]
    if block == expect:
        got += data[4:]
        expect += 1
    s.sendto(struct.pack("!HH", 4, block), peer)
    if block == expect - 1 and len(data) - 4 < 1432:
        print("received", len(got), flush=True)
        sys.exit(0 if len(got) == tsize else 3)
sys.exit("the second transfer did not complete within 20 s (the aborted one is still held?)")
"#,
    )
    .unwrap();
    let mut c = ns.command("python3");
    c.arg(&script);
    let out = ns.run_timeout(c, Duration::from_secs(40)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PXE-like client failed: {stdout}{}\nappliance log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log_text()
    );
    assert!(
        stdout.contains(&format!("tsize {}", payload.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("received {}", payload.len())),
        "{stdout}"
    );
    // Both transfers have ended: the probe counted as a probe (not aborted, not
    // completed), nothing held.
    wait_until_no_transfer_is_held(&app);
    assert_eq!(metric(&app, "cosm_tftp_probe_transfers_total"), 1);
    assert_eq!(metric(&app, "cosm_tftp_aborted_transfers_total"), 0);
    assert_eq!(metric(&app, "cosm_tftp_completed_transfers_total"), 1);
}

#[test]
fn traversal_symlinks_out_of_the_root_and_writes_are_refused() {
    let (ns, app, root) = start("");
    std::fs::write(app.dir.path().join("secret.txt"), "not for TFTP").unwrap();
    std::os::unix::fs::symlink(app.dir.path().join("secret.txt"), root.join("escape")).unwrap();
    std::fs::write(root.join("ok.txt"), "fine").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let local = out_dir.path().join("got");
    for remote in [
        "../secret.txt",
        "/etc/passwd",
        "escape",
        "..\\secret.txt",
        "missing",
    ] {
        let out = atftp(&ns, remote, &local, &[]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains("error received from server"),
            "{remote}: atftp said {err}"
        );
        let got = std::fs::read_to_string(&local).unwrap_or_default();
        assert!(
            !got.contains("not for TFTP") && !got.contains("root:"),
            "{remote} leaked: {got}"
        );
    }
    // A write request is refused and nothing is written.
    let src = out_dir.path().join("upload.txt");
    std::fs::write(&src, "upload").unwrap();
    let mut c = ns.command("atftp");
    c.args(["--put", "-r", "uploaded.txt", "-l"])
        .arg(&src)
        .args(["127.0.0.1", "69"]);
    let out = ns.run(c).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error received from server"),
        "{out:?}"
    );
    assert!(!root.join("uploaded.txt").exists());
    // The root is still served, and each refusal was logged with its reason.
    let out = atftp(&ns, "ok.txt", &local, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&local).unwrap(), "fine");
    assert_eq!(metric(&app, "cosm_tftp_refused_requests_total"), 6);
    let log = app.log_text();
    for reason in [
        "the path leaves the TFTP root",
        "absolute paths are not served",
        "outside the TFTP root",
        "no such file",
        "write requests are refused",
    ] {
        assert!(log.contains(reason), "no log line says {reason:?}:\n{log}");
    }
}

#[test]
fn fifty_concurrent_clients_each_receive_a_four_mib_file_intact() {
    let (ns, app, root) = start("");
    let mut data = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(root.join("big.bin"), &data).unwrap();
    let want = Sha256::digest(&data);
    let out_dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..50 {
        let local = out_dir.path().join(format!("big{i}.bin"));
        let mut c = ns.command("atftp");
        c.args(["--get", "-r", "big.bin", "-l"])
            .arg(&local)
            .args(["--option", "blksize 1468"]);
        if i % 2 == 1 {
            c.args(["--option", "windowsize 16"]);
        }
        c.args(["127.0.0.1", "69"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push((local, c.spawn().unwrap()));
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    for (local, mut child) in children {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("atftp for {} did not finish within 240 s", local.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "{}: {err}", local.display());
        let got = std::fs::read(&local).unwrap();
        assert_eq!(got.len(), data.len(), "{}", local.display());
        assert!(
            Sha256::digest(&got) == want,
            "{} is corrupt",
            local.display()
        );
    }
    wait_until_no_transfer_is_held(&app);
    assert_eq!(metric(&app, "cosm_tftp_completed_transfers_total"), 50);
    let _ = Command::new("true").status();
}
