//! Configuring the installed system: mount its root, write the plan's files, enrol the
//! installed agent and store its credential there, unmount.
//!
//! The installed root came from the image, so its symlinks could point anywhere — an
//! absolute link is resolved against the ramdisk's root, not the mounted one. Every path
//! written is therefore walked component by component without following a symlink
//! (a link is refused, never followed), and files are opened with `O_NOFOLLOW`.

use anyhow::{bail, Context};
use cosm_wire::{valid_install_path, InstallFile};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A filesystem mounted on a temporary directory; unmounted (and the directory removed)
/// when dropped.
#[derive(Debug)]
pub struct Mounted {
    dir: Option<tempfile::TempDir>,
    device: PathBuf,
}

impl Mounted {
    /// Mounts the ext4 filesystem on `device`.
    pub fn ext4(device: &Path) -> anyhow::Result<Mounted> {
        let dir = tempfile::Builder::new()
            .prefix("cosm-install-root.")
            .tempdir()
            .context("cannot make a mount point")?;
        nix::mount::mount(
            Some(device),
            dir.path(),
            Some("ext4"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "cannot mount {} (ext4) on {}: is the root partition ext4, and ext4 in the kernel?",
                device.display(),
                dir.path().display()
            )
        })?;
        Ok(Mounted {
            dir: Some(dir),
            device: device.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// Unmounts, reporting a failure (dropping also unmounts, but cannot report).
    pub fn unmount(mut self) -> anyhow::Result<()> {
        let dir = self.dir.take().expect("mounted");
        nix::mount::umount2(dir.path(), nix::mount::MntFlags::empty()).with_context(|| {
            format!(
                "cannot unmount {} from {}",
                self.device.display(),
                dir.path().display()
            )
        })?;
        dir.close().ok();
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Lazily if need be: a failed install must not leave the mount behind.
            if nix::mount::umount2(dir.path(), nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Makes `dir` (absolute, inside the installed system) below `root`, creating missing
/// directories with mode 0755, refusing any component that is a symlink or not a
/// directory. Returns the real path.
pub fn make_dirs(root: &Path, dir: &str) -> anyhow::Result<PathBuf> {
    let mut at = root.to_path_buf();
    for part in dir.split('/').filter(|c| !c.is_empty()) {
        if part == "." || part == ".." {
            bail!("{dir}: no . or .. components");
        }
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{dir}: {} is a symlink in the installed system; installers never follow one",
                at.strip_prefix(root).unwrap_or(&at).display()
            ),
            Ok(m) if !m.is_dir() => bail!(
                "{dir}: {} is not a directory in the installed system",
                at.strip_prefix(root).unwrap_or(&at).display()
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&at)
                    .with_context(|| format!("cannot create {}", at.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", at.display())),
        }
    }
    Ok(at)
}

/// Writes one plan file below `root`.
pub fn write_file(root: &Path, file: &InstallFile) -> anyhow::Result<()> {
    if !valid_install_path(&file.path) {
        bail!(
            "the plan's file path {:?} is not an absolute path without . or .. components",
            file.path
        );
    }
    let (parent, name) = file.path.rsplit_once('/').expect("absolute");
    let dir = make_dirs(root, parent)?;
    let path = dir.join(name);
    let mode = file.mode & 0o7777;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .with_context(|| {
            format!(
                "cannot write {} in the installed system (a symlink there is refused)",
                file.path
            )
        })?;
    // The mode given at creation is masked by the umask and unused for an existing file.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", file.path))?;
    f.write_all(file.content.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", file.path))?;
    Ok(())
}

/// Writes every plan file below `root`, in order.
pub fn write_files(root: &Path, files: &[InstallFile]) -> anyhow::Result<()> {
    for f in files {
        write_file(root, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(path: &str, mode: u32, content: &str) -> InstallFile {
        InstallFile {
            path: path.into(),
            mode,
            content: content.into(),
        }
    }

    #[test]
    fn files_land_inside_the_root_with_their_mode() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/hostname"), "old\n").unwrap();
        write_files(
            t.path(),
            &[
                file("/etc/hostname", 0o644, "node1\n"),
                file("/etc/cosm/agent.toml", 0o600, "appliance = \"x\"\n"),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
            "node1\n"
        );
        let p = t.path().join("etc/cosm/agent.toml");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(t.path().join("etc/cosm"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = t.path();
        // A directory symlink pointing out, and a file symlink pointing out.
        symlink(outside.path(), root.join("etc")).unwrap();
        std::fs::create_dir(root.join("var")).unwrap();
        symlink(outside.path().join("victim"), root.join("var/file")).unwrap();
        std::fs::write(outside.path().join("victim"), "keep").unwrap();
        let e = write_file(root, &file("/etc/hostname", 0o644, "x")).unwrap_err();
        assert!(format!("{e:#}").contains("etc is a symlink"), "{e:#}");
        let e = write_file(root, &file("/var/file", 0o644, "x")).unwrap_err();
        assert!(
            format!("{e:#}").contains("a symlink there is refused"),
            "{e:#}"
        );
        for bad in ["/etc/../x", "relative", "/", "/a//b"] {
            let e = write_file(root, &file(bad, 0o644, "x")).unwrap_err();
            assert!(e.to_string().contains("not an absolute path"), "{bad}: {e}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        // A file where a directory is needed.
        std::fs::write(root.join("usr"), "").unwrap();
        let e = make_dirs(root, "/usr/lib").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
