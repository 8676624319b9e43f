//! Item 13 (issue 11): a file larger than the cache is streamed from disk, not read whole
//! into memory, and other requests are served while it goes. In a test binary of its
//! own, so the process's memory figures are this test's alone.

mod common;

use common::{rrq, Client, Server};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

const FILE_MIB: usize = 64;

/// The byte at `offset` of the large file: a pattern the client checks as it receives,
/// so neither side ever holds the file.
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn a_file_larger_than_the_cache_is_streamed_and_others_are_served_meanwhile() {
    let server = Server::start(|s| s.cache_bytes = 1 << 20);
    let size = (FILE_MIB << 20) as u64 + 777;
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(server.root.path().join("big.img")).unwrap(),
        );
        let mut chunk = Vec::with_capacity(1 << 16);
        let mut offset = 0u64;
        while offset < size {
            chunk.clear();
            let end = (offset + (1 << 16)).min(size);
            chunk.extend((offset..end).map(byte_at));
            f.write_all(&chunk).unwrap();
            offset = end;
        }
    }
    server.write("small.ipxe", b"#!ipxe\nchain http://192.0.2.1/boot\n");
    let before = peak_rss();

    // The large transfer pauses after its first block while atftp fetches the small file
    // (the server keeps the large one open meanwhile), then runs to the end.
    let client = Client::new();
    let mut offset = 0u64;
    let mut bad = None;
    let mut small_fetched = None;
    let out_dir = tempfile::tempdir().unwrap();
    let options = client
        .fetch(
            server.addr(),
            &rrq(
                "big.img",
                &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "16")],
            ),
            16,
            Duration::from_secs(600),
            |block, data| {
                if block == 1 {
                    assert_eq!(server.handle.stats.active.load(Ordering::Relaxed), 1);
                    let local = out_dir.path().join("small.ipxe");
                    let out = Command::new("atftp")
                        .args(["--get", "-r", "small.ipxe", "-l"])
                        .arg(&local)
                        .arg("127.0.0.1")
                        .arg(server.addr().port().to_string())
                        .output()
                        .expect("atftp (apt-get install atftp)");
                    small_fetched = Some((out, std::fs::read(&local).unwrap_or_default()));
                }
                for (i, b) in data.iter().enumerate() {
                    if bad.is_none() && *b != byte_at(offset + i as u64) {
                        bad = Some(offset + i as u64);
                    }
                }
                offset += data.len() as u64;
            },
        )
        .unwrap();
    let after = peak_rss();
    assert_eq!(bad, None, "the large file arrived corrupt at this offset");
    assert_eq!(offset, size);
    assert!(
        options.contains(&("tsize".to_string(), size.to_string())),
        "{options:?}"
    );
    let (out, small) = small_fetched.unwrap();
    assert!(out.status.success(), "atftp: {out:?}");
    assert_eq!(small, b"#!ipxe\nchain http://192.0.2.1/boot\n");

    let growth = after.saturating_sub(before);
    eprintln!(
        "peak RSS {} MiB before, {} MiB after a {FILE_MIB} MiB transfer (+{} KiB)",
        before >> 20,
        after >> 20,
        growth >> 10
    );
    assert!(
        growth < size / 4,
        "peak memory grew by {} MiB serving a {FILE_MIB} MiB file larger than the cache",
        growth >> 20
    );
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert_eq!(server.handle.stats.completed.load(Ordering::Relaxed), 2);
}
