//! Which disk an image goes to, its partitions' device nodes, and making the kernel read
//! a new partition table.
//!
//! Disks are found in sysfs (`/sys/block`, `/sys/dev/block`); the functions take the sysfs
//! root so tests can point them at a fixture tree.

use cosm_wire::human_bytes;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A whole disk to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`, `sda`, `nvme0n1`, `loop3`).
    pub name: String,
    /// Its device node (`/dev/vda`).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Logical block size: the sector size of its partition table.
    pub sector: u64,
}

/// Block devices that are never installed on: loop devices, RAM disks, optical drives,
/// compressed RAM swap, floppies.
const NOT_INSTALL_DISKS: [&str; 5] = ["loop", "ram", "sr", "zram", "fd"];

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A disk's size and sector size from its sysfs directory; `None` when unreadable.
fn sysfs_disk(dir: &Path) -> Option<(u64, u64)> {
    // `size` is in 512-byte units whatever the logical block size.
    let size = read_trimmed(&dir.join("size"))?.parse::<u64>().ok()? * 512;
    let sector = read_trimmed(&dir.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    Some((size, sector))
}

/// The disk to install on: `wanted` (the plan's, by kernel name) or else the first
/// non-removable whole disk, by name, of at least `raw_size` bytes. `sys` is the sysfs
/// root (`/sys`), `dev` the device directory (`/dev`).
pub fn choose(sys: &Path, dev: &Path, wanted: Option<&str>, raw_size: u64) -> anyhow::Result<Disk> {
    let block = sys.join("block");
    let mut names: Vec<String> = std::fs::read_dir(&block)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", block.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let disk = |name: &str| -> Option<Disk> {
        let (size, sector) = sysfs_disk(&block.join(name))?;
        Some(Disk {
            name: name.to_string(),
            path: dev.join(name),
            size,
            sector,
        })
    };
    if let Some(name) = wanted {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            anyhow::bail!("the plan's disk {name:?} is not a kernel disk name (vda, sda, nvme0n1)");
        }
        if block.join(name).join("partition").exists() {
            anyhow::bail!("the plan's disk {name} is a partition, not a whole disk");
        }
        let d = disk(name).ok_or_else(|| {
            anyhow::anyhow!(
                "the plan names disk {name}, which this machine does not have (block devices: {})",
                names.join(", ")
            )
        })?;
        check_size(&d, raw_size)?;
        return Ok(d);
    }
    let mut seen = Vec::new();
    for name in &names {
        let skipped = NOT_INSTALL_DISKS.iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        });
        let dir = block.join(name);
        if skipped
            || read_trimmed(&dir.join("hidden")).as_deref() == Some("1")
            || dir.join("partition").exists()
        {
            continue;
        }
        if read_trimmed(&dir.join("removable")).as_deref() == Some("1") {
            seen.push(format!("{name} (removable)"));
            continue;
        }
        let Some(d) = disk(name) else { continue };
        if d.size >= raw_size {
            return Ok(d);
        }
        seen.push(format!("{name} {}", human_bytes(d.size)));
    }
    anyhow::bail!(
        "no disk to install on: the image needs a non-removable disk of at least {} ({}); \
         disks found: {}",
        human_bytes(raw_size),
        raw_size,
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// A disk given by its device node (`--disk /dev/sdb`, or a symlink to it).
pub fn from_path(sys: &Path, path: &Path, raw_size: u64) -> anyhow::Result<Disk> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta =
        std::fs::metadata(path).map_err(|e| anyhow::anyhow!("--disk {}: {e}", path.display()))?;
    if !meta.file_type().is_block_device() {
        anyhow::bail!("--disk {} is not a block device", path.display());
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let dir = std::fs::canonicalize(&link)
        .map_err(|e| anyhow::anyhow!("--disk {}: {}: {e}", path.display(), link.display()))?;
    if dir.join("partition").exists() {
        anyhow::bail!(
            "--disk {} is a partition: give the whole disk",
            path.display()
        );
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("--disk {}: no kernel name", path.display()))?
        .to_string();
    let (size, sector) = sysfs_disk(&dir)
        .ok_or_else(|| anyhow::anyhow!("--disk {}: cannot read its size", path.display()))?;
    let d = Disk {
        name,
        path: path.to_path_buf(),
        size,
        sector,
    };
    check_size(&d, raw_size)?;
    Ok(d)
}

fn check_size(d: &Disk, raw_size: u64) -> anyhow::Result<()> {
    if d.size < raw_size {
        anyhow::bail!(
            "disk {} has {} ({} bytes), smaller than the image's {} raw ({} bytes): refusing \
             to write it",
            d.path.display(),
            human_bytes(d.size),
            d.size,
            human_bytes(raw_size),
            raw_size
        );
    }
    Ok(())
}

/// The kernel name of partition `number` of `disk` (`vda2`, `nvme0n1p2`, `loop3p2`), from
/// the `partition` files under `sys/block/<disk>/`.
pub fn partition_name(sys: &Path, disk: &str, number: u32) -> Option<String> {
    let dir = sys.join("block").join(disk);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        read_trimmed(&dir.join(n).join("partition")).and_then(|p| p.parse::<u32>().ok())
            == Some(number)
    })
}

/// Waits (up to `timeout`) for partition `number` of `disk` to appear in sysfs and its
/// device node in `dev`; returns the node.
pub fn wait_for_partition(
    sys: &Path,
    dev: &Path,
    disk: &str,
    number: u32,
    timeout: Duration,
) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(name) = partition_name(sys, disk, number) {
            let node = dev.join(&name);
            if node.exists() {
                return Ok(node);
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "partition {number} of {disk} did not appear in {} and {} within {} s of \
                 re-reading the partition table",
                sys.join("block").join(disk).display(),
                dev.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The two block-device ioctls of an install, which nix has no safe calls for.
#[allow(unsafe_code)]
mod ioctl {
    use nix::libc::{c_int, c_void};
    use std::os::fd::AsRawFd;

    // BLKRRPART is _IO(0x12, 95) in <linux/fs.h>: no argument.
    nix::ioctl_none!(blkrrpart, 0x12, 95);

    /// Asks the kernel to read the partition table of the whole disk open as `file`.
    pub(super) fn reread_partitions(file: &std::fs::File) -> nix::Result<()> {
        // SAFETY: BLKRRPART takes no argument and reads no memory of ours; the descriptor
        // is open for as long as `file` is borrowed.
        unsafe { blkrrpart(file.as_raw_fd()) }.map(|_| ())
    }

    /// `struct blkpg_partition` of <linux/blkpg.h>.
    #[repr(C)]
    struct BlkpgPartition {
        /// Bytes.
        start: i64,
        length: i64,
        pno: c_int,
        devname: [u8; 64],
        volname: [u8; 64],
    }

    /// `struct blkpg_ioctl_arg` of <linux/blkpg.h>.
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: c_int,
        flags: c_int,
        datalen: c_int,
        data: *mut c_void,
    }

    const BLKPG_ADD_PARTITION: c_int = 1;

    // BLKPG is _IO(0x12, 105) but takes a pointer to a blkpg_ioctl_arg.
    nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);

    /// Tells the kernel that the disk open as `file` has partition `number` at `start`
    /// bytes, `length` bytes long (what `partx --add` does).
    pub(super) fn add_partition(
        file: &std::fs::File,
        number: u32,
        start: u64,
        length: u64,
    ) -> nix::Result<()> {
        let overflow = |_| nix::errno::Errno::EOVERFLOW;
        let mut partition = BlkpgPartition {
            start: i64::try_from(start).map_err(overflow)?,
            length: i64::try_from(length).map_err(overflow)?,
            pno: c_int::try_from(number).map_err(overflow)?,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = BlkpgIoctlArg {
            op: BLKPG_ADD_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
            data: (&mut partition as *mut BlkpgPartition).cast(),
        };
        // SAFETY: `arg` and the `partition` it points to have the layout of
        // <linux/blkpg.h> and live until the call returns; the kernel only reads them.
        unsafe { blkpg(file.as_raw_fd(), &arg) }.map(|_| ())
    }
}

/// Makes the kernel read `disk`'s partition table, retrying while it says the disk is busy
/// (udev or a scan of the previous write may still hold it) for up to `patience`.
pub fn reread_partitions(disk: &Path, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    let file = std::fs::File::open(disk).map_err(|e| {
        anyhow::anyhow!(
            "cannot open {} to re-read its partitions: {e}",
            disk.display()
        )
    })?;
    loop {
        match ioctl::reread_partitions(&file) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => anyhow::bail!(
                "the kernel cannot re-read the partition table of {} (BLKRRPART): {e}",
                disk.display()
            ),
        }
    }
}

/// Tells the kernel about one partition of `disk` itself (BLKPG), for kernels that read
/// no GPT (built without CONFIG_EFI_PARTITION): BLKRRPART then succeeds and finds nothing.
pub fn add_partition(disk: &Path, number: u32, start: u64, length: u64) -> anyhow::Result<()> {
    let file = std::fs::File::open(disk)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", disk.display()))?;
    ioctl::add_partition(&file, number, start, length).map_err(|e| {
        anyhow::anyhow!(
            "cannot add partition {number} of {} to the kernel (BLKPG): {e}",
            disk.display()
        )
    })
}

/// The size in bytes the kernel gives partition `name` of `disk`.
pub fn partition_size(sys: &Path, disk: &str, name: &str) -> Option<u64> {
    read_trimmed(&sys.join("block").join(disk).join(name).join("size"))?
        .parse::<u64>()
        .ok()
        .map(|s| s * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let add = |name: &str, sectors: u64, removable: bool| {
            let d = t.path().join("sys/block").join(name);
            fs::create_dir_all(d.join("queue")).unwrap();
            fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(d.join("queue/logical_block_size"), "512\n").unwrap();
        };
        add("loop0", 1 << 30, false);
        add("nvme0n1", 1 << 20, false); // 512 MiB
        add("sda", 1 << 24, true); // 8 GiB, removable
        add("sr0", 1 << 24, false);
        add("vda", 1 << 25, false); // 16 GiB
        add("zram0", 1 << 30, false);
        for (disk, part, n) in [
            ("vda", "vda1", 1),
            ("vda", "vda2", 2),
            ("nvme0n1", "nvme0n1p2", 2),
        ] {
            let p = t.path().join("sys/block").join(disk).join(part);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
        }
        t
    }

    #[test]
    fn the_first_big_enough_fixed_disk_is_chosen() {
        let t = fixture();
        let sys = t.path().join("sys");
        let dev = Path::new("/dev");
        let d = choose(&sys, dev, None, 100 << 20).unwrap();
        assert_eq!((d.name.as_str(), d.size), ("nvme0n1", 512 << 20));
        assert_eq!(d.path, PathBuf::from("/dev/nvme0n1"));
        // Too big for nvme0n1; sda is removable; sr0 and zram0 are never disks.
        let d = choose(&sys, dev, None, 1 << 30).unwrap();
        assert_eq!(d.name, "vda");
        let e = choose(&sys, dev, None, 64 << 30).unwrap_err().to_string();
        assert!(e.contains("at least 64.0 GiB"), "{e}");
        assert!(
            e.contains("nvme0n1 512.0 MiB, sda (removable), vda 16.0 GiB"),
            "{e}"
        );
    }

    #[test]
    fn the_plans_disk_is_checked() {
        let t = fixture();
        let sys = t.path().join("sys");
        let dev = Path::new("/dev");
        assert_eq!(choose(&sys, dev, Some("sda"), 1 << 30).unwrap().name, "sda");
        let e = choose(&sys, dev, Some("nvme0n1"), 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaller than the image's 1.0 GiB raw"), "{e}");
        let e = choose(&sys, dev, Some("sdz"), 1).unwrap_err().to_string();
        assert!(e.contains("does not have"), "{e}");
        assert!(choose(&sys, dev, Some("../vda"), 1).is_err());
        assert!(choose(&sys, dev, Some("vda2"), 1).is_err());
    }

    #[test]
    fn partitions_are_found_by_number() {
        let t = fixture();
        let sys = t.path().join("sys");
        assert_eq!(partition_name(&sys, "vda", 2).as_deref(), Some("vda2"));
        assert_eq!(
            partition_name(&sys, "nvme0n1", 2).as_deref(),
            Some("nvme0n1p2")
        );
        assert_eq!(partition_name(&sys, "vda", 3), None);
        let dev = t.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vda2"), "").unwrap();
        assert_eq!(
            wait_for_partition(&sys, &dev, "vda", 2, Duration::ZERO).unwrap(),
            dev.join("vda2")
        );
        let e = wait_for_partition(&sys, &dev, "nvme0n1", 2, Duration::from_millis(150))
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition 2 of nvme0n1 did not appear"), "{e}");
    }
}
