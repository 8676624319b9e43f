//! Shared by the install tests: required tools, GPT disks made by sfdisk, deterministic
//! bytes, and loop devices that are detached whatever happens.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the test, naming the package, when a tool is missing.
pub fn need(tool: &str, package: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file());
    assert!(
        found,
        "the install tests need {tool} (Debian package {package}; `make deps` installs it)"
    );
}

pub fn need_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the install tests must run as root (loop devices, mounts): run `make test` as root"
    );
}

/// Runs a command, fails the test if it fails; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; (stdout, stderr), whatever its status.
pub fn output(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Makes `path` a `size`-byte file with a GPT (512-byte sectors) from an sfdisk script's
/// partition lines.
pub fn sfdisk_gpt(path: &Path, size: u64, partitions: &[&str]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let script = format!("label: gpt\nsector-size: 512\n{}\n", partitions.join("\n"));
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sfdisk --json` of a disk or image.
pub fn sfdisk_json(path: &Path) -> serde_json::Value {
    let text = run(Command::new("sfdisk").arg("--json").arg(path));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["partitiontable"].clone()
}

/// Checks the GPT of `path` with sfdisk --verify and sgdisk -v; panics with their words
/// when either finds a problem.
pub fn assert_table_valid(path: &Path) {
    let (out, err) = output(Command::new("sfdisk").arg("--verify").arg(path));
    assert!(
        out.contains("No errors detected") && err.trim().is_empty(),
        "sfdisk --verify {}:\n{out}{err}",
        path.display()
    );
    let (out, err) = output(Command::new("sgdisk").arg("-v").arg(path));
    assert!(
        out.contains("No problems found") && !out.contains("Problem"),
        "sgdisk -v {}:\n{out}{err}",
        path.display()
    );
}

/// Deterministic incompressible bytes (xorshift64), seeded.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A loop device over a file (with partition scanning), detached on drop after any mount
/// of its partitions is undone.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(file));
        LoopDevice {
            path: PathBuf::from(dev.trim()),
        }
    }

    pub fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The node of partition `n` (`/dev/loop3p2`).
    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.path.display()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let prefix = format!("{}p", self.path.display());
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            for line in mounts.lines() {
                let mut words = line.split_whitespace();
                if let (Some(src), Some(dir)) = (words.next(), words.next()) {
                    if src.starts_with(&prefix) || src == self.path.to_string_lossy() {
                        let _ = Command::new("umount").arg(dir).status();
                    }
                }
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
