//! The TFTP server against a client that speaks raw UDP on loopback: what PXE ROMs do
//! (tsize probe, windows, lost blocks) and what an attacker sends (malformed requests,
//! absurd options). Each test runs its own server on its own port.

mod common;

use common::{ack, error, request, rrq, Client, Reply, Server};
use cosm_netboot::tftp::{TftpEvent, TransferEnd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Item 14a: netascii is converted (LF → CR LF, CR → CR NUL) and tsize is not the file's
/// size; mode mail is refused.
#[test]
fn netascii_is_converted_and_mail_is_refused() {
    let server = Server::start(|_| {});
    let text = b"line one\nline two\r\nbare cr\rend\n".repeat(40);
    server.write("boot.txt", &text);
    let mut want = Vec::new();
    for &b in &text {
        match b {
            b'\n' => want.extend_from_slice(b"\r\n"),
            b'\r' => want.extend_from_slice(b"\r\0"),
            b => want.push(b),
        }
    }
    let client = Client::new();
    let mut got = Vec::new();
    let options = client
        .fetch(
            server.addr(),
            &request(1, "boot.txt", "netascii", &[("tsize", "0")]),
            1,
            Duration::from_secs(30),
            |_, d| got.extend_from_slice(d),
        )
        .unwrap();
    assert_eq!(got, want, "netascii was not converted");
    assert!(
        options
            .iter()
            .all(|(k, v)| k != "tsize" || *v == want.len().to_string()),
        "tsize must be the converted size or absent: {options:?}"
    );

    let client = Client::new();
    client.send(server.addr(), &request(1, "boot.txt", "mail", &[]));
    match client.recv(Duration::from_secs(5)) {
        Some((Reply::Error(code, msg), _)) => {
            assert!(code == 4 || code == 0, "ERROR {code} {msg}");
            assert!(msg.contains("mail"), "{msg}");
        }
        other => panic!("mode mail was not refused: {other:?}"),
    }
    assert!(server.wait_idle(Duration::from_secs(10)));
}

/// Item 14b: every malformed packet gets ERROR 4 from the server, an ERROR packet gets
/// nothing (RFC 1350), and the server goes on serving.
#[test]
fn malformed_requests_get_an_error_and_the_server_keeps_serving() {
    let server = Server::start(|_| {});
    server.write("ok.bin", &pattern(3000));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("no mode", b"\x00\x01ok.bin\x00".to_vec()),
        ("empty mode", b"\x00\x01ok.bin\x00\x00".to_vec()),
        ("unknown opcode", b"\x00\x09ok.bin\x00octet\x00".to_vec()),
        (
            "option without a value",
            b"\x00\x01ok.bin\x00octet\x00blksize\x00".to_vec(),
        ),
        (
            "NUL inside the name",
            b"\x00\x01ok\x00.bin\x00octet\x00".to_vec(),
        ),
        (
            "extra field",
            b"\x00\x01ok.bin\x00octet\x00junk\x00".to_vec(),
        ),
        ("unterminated name", b"\x00\x01ok.bin".to_vec()),
        ("one byte", b"\x01".to_vec()),
        ("a stray ACK", ack(1)),
        ("unknown mode", request(1, "ok.bin", "binary", &[])),
    ];
    cases.push(("write with no mode", b"\x00\x02up.bin\x00".to_vec()));
    for (what, packet) in &cases {
        let client = Client::new();
        client.send(server.addr(), packet);
        match client.recv(Duration::from_secs(5)) {
            Some((Reply::Error(4, msg), _)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected ERROR 4, got {other:?}"),
        }
    }
    // An ERROR sent to the server's port is not answered.
    let client = Client::new();
    client.send(server.addr(), &error(0, "hello"));
    assert_eq!(client.recv(Duration::from_millis(500)), None);
    // Still serving.
    let mut got = Vec::new();
    client
        .fetch(
            server.addr(),
            &rrq("ok.bin", &[]),
            1,
            Duration::from_secs(30),
            |_, d| got.extend_from_slice(d),
        )
        .unwrap();
    assert_eq!(got, pattern(3000));
    assert_eq!(
        server.handle.stats.refused.load(Ordering::Relaxed),
        cases.len() as u64
    );
}

/// One PXE-style probe from a fresh port: RRQ with tsize → OACK → ERROR 8, then at once
/// the real RRQ from the same port, sent once and never repeated. Returns whether the
/// server answered it and the file arrived whole.
fn probe_then_fetch(server: &Server, want: &[u8]) -> Result<(), String> {
    let client = Client::new();
    client.send(
        server.addr(),
        &rrq("pxe.bin", &[("tsize", "0"), ("blksize", "1432")]),
    );
    let tid = match client.recv(Duration::from_secs(5)) {
        Some((r @ Reply::OAck(_), tid)) => {
            assert_eq!(r.option("tsize"), Some(want.len().to_string().as_str()));
            tid
        }
        other => return Err(format!("no OACK for the probe: {other:?}")),
    };
    client.send(tid, &error(8, "tsize probe done"));
    let real = rrq("pxe.bin", &[("blksize", "1432")]);
    client.send(server.addr(), &real);
    // The first answer must come to this one RRQ: a dropped request gets nothing.
    let first = loop {
        match client.recv(Duration::from_secs(5)) {
            Some((_, from)) if from == tid => continue, // late packet of the probe
            Some((reply, from)) => break (reply, from),
            None => return Err("the RRQ after the probe was dropped".into()),
        }
    };
    let (Reply::OAck(_), from) = first else {
        return Err(format!("unexpected first answer {first:?}"));
    };
    client.send(from, &ack(0));
    let mut got = Vec::new();
    let mut last = 0u16;
    while got.len() < want.len() || last == 0 {
        match client.recv(Duration::from_secs(5)) {
            Some((Reply::Data(n, d), f)) if f == from => {
                if n == last.wrapping_add(1) {
                    last = n;
                    got.extend_from_slice(&d);
                }
                client.send(from, &ack(n));
                if d.len() < 1432 {
                    break;
                }
            }
            Some(_) => {}
            None => return Err(format!("transfer stalled after block {last}")),
        }
    }
    if got != want {
        return Err(format!("got {} bytes, want {}", got.len(), want.len()));
    }
    Ok(())
}

/// Item 14c: the RRQ right after a tsize probe's ERROR, from the same port, is served
/// every time (it used to be dropped when the server read it before the ERROR).
#[test]
fn the_request_after_a_tsize_probe_is_served_every_time() {
    let server = Server::start(|_| {});
    let want = pattern(5000);
    server.write("pxe.bin", &want);
    server.write("load.bin", &pattern(4 << 20));
    // Other clients keep the server busy, as in a boot storm: then the probe's ERROR and
    // the next RRQ are often read in the same turn, which is when the RRQ was dropped.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures: Vec<String> = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let load = rrq("load.bin", &[("blksize", "1468"), ("windowsize", "64")]);
                for _ in 0..100 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = Client::new().fetch(
                        server.addr(),
                        &load,
                        64,
                        Duration::from_secs(60),
                        |_, _| {},
                    );
                }
            });
        }
        let failures = (0..30)
            .filter_map(|i| {
                probe_then_fetch(&server, &want)
                    .err()
                    .map(|e| format!("try {i}: {e}"))
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        failures
    });
    assert!(
        failures.is_empty(),
        "served {} of 30:\n{}",
        30 - failures.len(),
        failures.join("\n")
    );
    assert!(server.wait_idle(Duration::from_secs(10)));
    let stats = &server.handle.stats;
    assert!(stats.completed.load(Ordering::Relaxed) >= 30);
    assert_eq!(stats.probes.load(Ordering::Relaxed), 30);
}

/// Item 14d: a tsize probe of a file smaller than one block is a probe, not a completed
/// transfer (the whole file was read for the first block, but the client took none).
#[test]
fn a_size_probe_is_counted_as_a_probe_not_as_a_completed_transfer() {
    let server = Server::start(|_| {});
    server.write("small.ipxe", b"#!ipxe\nchain http://192.0.2.1/boot\n");
    let client = Client::new();
    client.send(server.addr(), &rrq("small.ipxe", &[("tsize", "0")]));
    let Some((Reply::OAck(_), tid)) = client.recv(Duration::from_secs(5)) else {
        panic!("no OACK");
    };
    client.send(tid, &error(8, "probe"));
    assert!(server.wait_idle(Duration::from_secs(10)));
    let stats = &server.handle.stats;
    assert_eq!(
        stats.completed.load(Ordering::Relaxed),
        0,
        "counted as completed"
    );
    assert_eq!(stats.probes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.aborted.load(Ordering::Relaxed), 0);
    let events = server.events.0.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            TftpEvent::Finished {
                end: TransferEnd::SizeProbe,
                sent: 0,
                ..
            }
        )),
        "{events:?}"
    );
}

/// Item 14e: `timeout=255` is not granted (RFC 2349: the OACK carries the client's value
/// or nothing), and a client that then goes silent frees its slot after the server's
/// own retries, not after 255 s each.
#[test]
fn a_huge_client_timeout_is_refused_and_a_silent_client_is_dropped() {
    let server = Server::start(|s| {
        s.timeout = Duration::from_millis(500);
        s.max_send_retries = 2;
    });
    server.write("f.bin", &pattern(2000));
    let client = Client::new();
    client.send(
        server.addr(),
        &rrq("f.bin", &[("timeout", "255"), ("tsize", "0")]),
    );
    let Some((oack @ Reply::OAck(_), _)) = client.recv(Duration::from_secs(5)) else {
        panic!("no OACK");
    };
    assert_eq!(
        oack.option("timeout"),
        None,
        "timeout 255 was granted: {oack:?}"
    );
    assert_eq!(oack.option("tsize"), Some("2000"));
    // Silent from here. max_stall is 3 × 0.5 s; 20 s leaves room for a loaded machine
    // and is far below one 255 s timeout.
    assert!(
        server.wait_idle(Duration::from_secs(20)),
        "a silent client still holds its transfer"
    );
    let events = server.events.0.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            TftpEvent::Finished {
                end: TransferEnd::TimedOut,
                ..
            }
        )),
        "{events:?}"
    );
    drop(events);

    // A modest timeout is granted as asked.
    let client = Client::new();
    client.send(server.addr(), &rrq("f.bin", &[("timeout", "3")]));
    let Some((oack @ Reply::OAck(_), tid)) = client.recv(Duration::from_secs(5)) else {
        panic!("no OACK");
    };
    assert_eq!(oack.option("timeout"), Some("3"));
    client.send(tid, &error(0, "done"));
}

/// Item 14f: with windowsize 4, the client loses the first block of the second window
/// and says so with an ACK of the block before it (RFC 7440); the server resends the
/// window at once. The retransmission timeout here is 10 s; a resend well within half
/// of it (still generous on a loaded machine) came from the ACK, not from the timer.
#[test]
fn a_lost_first_block_of_a_window_is_resent_on_the_clients_ack() {
    let timeout = Duration::from_secs(10);
    let server = Server::start(|s| s.timeout = timeout);
    let want = pattern(512 * 20 + 100);
    server.write("w.bin", &want);
    let client = Client::new();
    client.send(server.addr(), &rrq("w.bin", &[("windowsize", "4")]));
    let Some((Reply::OAck(o), tid)) = client.recv(Duration::from_secs(5)) else {
        panic!("no OACK");
    };
    assert_eq!(o, vec![("windowsize".to_string(), "4".to_string())]);
    client.send(tid, &ack(0));
    let mut got = Vec::new();
    let mut last = 0u16;
    let mut dropped_5 = false;
    let mut nacked_at = None;
    let mut resent_after = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "transfer did not end");
        let Some((Reply::Data(n, d), _)) = client.recv(Duration::from_secs(30)) else {
            panic!("nothing from the server for 30 s after block {last}");
        };
        if n == 5 && !dropped_5 {
            dropped_5 = true; // lost on the way
            continue;
        }
        if n == 5 && nacked_at.is_some() && resent_after.is_none() {
            resent_after = nacked_at.map(|t: Instant| t.elapsed());
        }
        if n == last.wrapping_add(1) {
            last = n;
            got.extend_from_slice(&d);
            if d.len() < 512 {
                client.send(tid, &ack(n));
                break;
            }
            if n % 4 == 0 {
                client.send(tid, &ack(n));
            }
        } else if n > last.wrapping_add(1) && nacked_at.is_none() {
            // Block 6 while 5 is missing: say what we have, once.
            client.send(tid, &ack(last));
            nacked_at = Some(Instant::now());
        }
    }
    assert_eq!(got, want);
    let resent_after = resent_after.expect("block 5 was never resent after the ACK");
    assert!(
        resent_after < timeout / 2,
        "block 5 came {resent_after:?} after the client's ACK 4: the server waited for its timeout ({timeout:?})"
    );
}
