//! Image installs (issue 16): what the ramdisk agent of a `ready` machine is told to write
//! onto its disk, how it reports progress, and how it reports the end.
//!
//! The flow: the machine's boot script starts the agent ramdisk with
//! `cosm.install=<plan URL>` on the kernel line (the URL carries the machine's install
//! token, like a kickstart URL). The agent fetches the [`InstallPlan`] (the appliance marks
//! the machine `deploying`), streams the image onto the disk, checking every chunk's
//! sha256 before a byte of it reaches the disk, grows the partition table to the disk,
//! writes [`InstallFile`]s into the installed root, enrols a fresh agent credential for the
//! installed system with the install token, and reports with [`InstallReport`].

use crate::MacAddr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The size of the chunks an image's sha256 list covers: 4 MiB of the compressed file.
pub const IMAGE_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// How a role's machines are installed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstallMethod {
    /// The distribution's installer with a kickstart (needs a CentOS mirror).
    Kickstart,
    /// A role image from the image repository streamed onto the disk by the agent ramdisk.
    Image,
}

impl std::fmt::Display for InstallMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstallMethod::Kickstart => "kickstart",
            InstallMethod::Image => "image",
        })
    }
}

impl std::str::FromStr for InstallMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kickstart" => Ok(InstallMethod::Kickstart),
            "image" => Ok(InstallMethod::Image),
            other => Err(format!(
                "unknown install method {other:?}: kickstart or image"
            )),
        }
    }
}

/// A file the installer writes into the installed system, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallFile {
    /// Absolute path inside the installed system (`/etc/hostname`); no `..` component.
    pub path: String,
    /// Unix permission bits, e.g. 0o644 (420).
    pub mode: u32,
    pub content: String,
}

/// What `GET /boot/install/{mac}?token=…` answers: everything the ramdisk agent needs to
/// install the machine from an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallPlan {
    pub mac: MacAddr,
    /// The image's name in the repository (`cosm-base-bookworm.img.zst`).
    pub image: String,
    /// Where to fetch it (zstd-compressed raw GPT disk image), absolute URL.
    pub image_url: String,
    /// Bytes of the compressed file.
    pub size: u64,
    /// sha256 of the whole compressed file, lowercase hex.
    pub sha256: String,
    /// Chunk size the `chunks` list covers ([`IMAGE_CHUNK_BYTES`]).
    pub chunk_bytes: u64,
    /// sha256 of each `chunk_bytes` of the compressed file, in order (the last may be
    /// shorter). The agent writes nothing of a chunk before it matched.
    pub chunks: Vec<String>,
    /// Bytes of the raw image (what lands on the disk).
    pub raw_size: u64,
    /// The disk to write, by kernel name (`vda`, `sda`, `nvme0n1`), chosen from the
    /// inventory; `None`: the agent takes the first non-removable disk large enough.
    pub disk: Option<String>,
    /// The GPT partition name of the root filesystem in the image (`root`); the agent
    /// grows it to the end of the disk and writes `files` into it.
    pub root_partition: String,
    /// Files written into the installed root (hostname, network, agent settings).
    pub files: Vec<InstallFile>,
    /// Where the installed agent keeps its credential (`/var/lib/cosm-agent`): the
    /// installer enrols with the install token and stores a fresh credential there.
    pub agent_state_dir: String,
    /// Send progress at most this often, in seconds.
    pub progress_every_secs: u32,
}

/// Body of `POST /api/v1/agent/install-progress` (install token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallProgress {
    pub mac: MacAddr,
    /// `streaming`, `verifying`, `partitioning`, `configuring`, `enrolling`.
    pub phase: String,
    /// Compressed bytes received and verified so far.
    pub bytes: u64,
    /// Of how many.
    pub total: u64,
    /// Average speed since the stream began, MiB/s of compressed bytes.
    pub mib_per_s: f64,
}

impl InstallProgress {
    /// Whole percent done (0..=100).
    pub fn percent(&self) -> u8 {
        if self.total == 0 {
            return 0;
        }
        ((self.bytes.min(self.total) as u128 * 100) / self.total as u128) as u8
    }
}

/// Body of `POST /api/v1/agent/install-report` (install token): how an install ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReport {
    pub mac: MacAddr,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// Whether `path` may be written by an installer: absolute, no `..`, `.` or empty
/// component, no NUL.
pub fn valid_install_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_paths_stay_inside_the_root() {
        assert!(valid_install_path("/etc/hostname"));
        assert!(valid_install_path("/etc/systemd/network/10-cosm.network"));
        for bad in [
            "etc/hostname",
            "/",
            "/etc/../root",
            "/etc//x",
            "/./x",
            "/a\0b",
            "",
        ] {
            assert!(!valid_install_path(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn percent_is_bounded() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let p = |bytes, total| InstallProgress {
            mac,
            phase: "streaming".into(),
            bytes,
            total,
            mib_per_s: 1.0,
        };
        assert_eq!(p(0, 0).percent(), 0);
        assert_eq!(p(50, 200).percent(), 25);
        assert_eq!(p(300, 200).percent(), 100);
        assert_eq!(p(u64::MAX, u64::MAX).percent(), 100);
    }

    #[test]
    fn methods_parse_and_print() {
        for m in [InstallMethod::Kickstart, InstallMethod::Image] {
            assert_eq!(m.to_string().parse::<InstallMethod>().unwrap(), m);
        }
        assert!("iso".parse::<InstallMethod>().is_err());
    }
}
