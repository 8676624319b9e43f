//! Growing an image's GUID partition table to the disk it was written to (UEFI
//! specification, chapter 5, "GUID Partition Table Disk Layout").
//!
//! A raw disk image carries its backup GPT (entries, then the header in the last sector) at
//! the image's end. Written to a bigger disk, that backup sits in the middle of the disk
//! and the space after it is unusable. [`grow`] puts the backup at the disk's real end,
//! moves the last usable LBA with it, extends the partition with the given name (which
//! must be the last one) to that LBA, recomputes every CRC, and makes the protective MBR
//! cover the disk. Nothing else of the table changes (GUIDs, attributes, other partitions).
//!
//! This module only reads and writes bytes through `Read + Write + Seek`: a disk, a file or
//! a buffer in tests. It does not tell the kernel (see `super::disk`).

use std::io::{Read, Seek, SeekFrom, Write};

/// Why a partition table could not be grown. Nothing was written unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("cannot {what} the partition table")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no GPT header at LBA 1 for {sector}-byte sectors (the image was not written, or its \
         partition table is for another sector size than this disk's)"
    )]
    NoHeader { sector: u64 },
    #[error("the primary GPT header is damaged: {0}")]
    BadHeader(String),
    #[error("the GPT partition entries do not match their CRC32 (damaged table)")]
    BadEntries,
    #[error("no partition is named {name:?} (partitions: {names})")]
    NoRoot { name: String, names: String },
    #[error("{count} partitions are named {name:?}: cannot tell which to grow")]
    ManyRoots { name: String, count: usize },
    #[error(
        "partition {number} ({name:?}) is not the last partition: partition {after} ends after \
         it, so it cannot be grown to the end of the disk"
    )]
    RootNotLast {
        name: String,
        number: u32,
        after: u32,
    },
    #[error(
        "the disk ({disk_sectors} sectors) is smaller than the partition table needs (its \
         partitions end at sector {needed})"
    )]
    DiskTooSmall { disk_sectors: u64, needed: u64 },
}

/// What [`grow`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// The grown partition's number (its 1-based index in the entry array, as Linux numbers
    /// partitions: `vda2`).
    pub number: u32,
    pub first_lba: u64,
    /// Its last LBA (inclusive) before and after.
    pub old_last_lba: u64,
    pub new_last_lba: u64,
    /// Sectors of the disk.
    pub disk_sectors: u64,
    pub sector: u64,
}

impl Grown {
    /// Bytes of the grown partition.
    pub fn partition_bytes(&self) -> u64 {
        (self.new_last_lba - self.first_lba + 1) * self.sector
    }
}

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header fields the CRC covers end here; `header_size` may be larger (the rest is
/// zero-filled reserved space up to the sector's end, which the CRC does not cover).
const MIN_HEADER_SIZE: usize = 92;
const MBR_PARTITIONS: usize = 446;
const PROTECTIVE_TYPE: u8 = 0xee;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A GPT header's fields (offsets from the specification's table 5-5).
mod header {
    pub(super) const HEADER_SIZE: usize = 12;
    pub(super) const HEADER_CRC: usize = 16;
    pub(super) const MY_LBA: usize = 24;
    pub(super) const ALTERNATE_LBA: usize = 32;
    pub(super) const FIRST_USABLE: usize = 40;
    pub(super) const LAST_USABLE: usize = 48;
    pub(super) const ENTRIES_LBA: usize = 72;
    pub(super) const ENTRY_COUNT: usize = 80;
    pub(super) const ENTRY_SIZE: usize = 84;
    pub(super) const ENTRIES_CRC: usize = 88;
}

/// A partition entry's fields (table 5-6).
mod entry {
    pub(super) const TYPE_GUID: usize = 0;
    pub(super) const FIRST_LBA: usize = 32;
    pub(super) const LAST_LBA: usize = 40;
    pub(super) const NAME: usize = 56;
    pub(super) const NAME_BYTES: usize = 72;
}

/// Sets a header's CRC32: computed over its `header_size` bytes with the CRC field zero.
fn seal_header(h: &mut [u8]) {
    let size = u32_at(h, header::HEADER_SIZE) as usize;
    put_u32(h, header::HEADER_CRC, 0);
    let crc = crc32fast::hash(&h[..size]);
    put_u32(h, header::HEADER_CRC, crc);
}

/// A partition entry's name: UTF-16LE, up to the first NUL.
pub fn entry_name(e: &[u8]) -> String {
    let units: Vec<u16> = e[entry::NAME..entry::NAME + entry::NAME_BYTES]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn is_used(e: &[u8]) -> bool {
    e[entry::TYPE_GUID..entry::TYPE_GUID + 16]
        .iter()
        .any(|&b| b != 0)
}

fn read_at<D: Read + Seek>(disk: &mut D, at: u64, buf: &mut [u8]) -> Result<(), GptError> {
    disk.seek(SeekFrom::Start(at))
        .and_then(|_| disk.read_exact(buf))
        .map_err(|source| GptError::Io {
            what: "read",
            source,
        })
}

fn write_at<D: Write + Seek>(disk: &mut D, at: u64, buf: &[u8]) -> Result<(), GptError> {
    disk.seek(SeekFrom::Start(at))
        .and_then(|_| disk.write_all(buf))
        .map_err(|source| GptError::Io {
            what: "write",
            source,
        })
}

/// The primary header and entry array, checked.
struct Table {
    header: Vec<u8>,
    entries: Vec<u8>,
    entry_size: usize,
    entry_count: usize,
}

fn read_table<D: Read + Seek>(disk: &mut D, sector: u64) -> Result<Table, GptError> {
    let mut header = vec![0u8; sector as usize];
    read_at(disk, sector, &mut header)?;
    if &header[..8] != SIGNATURE {
        return Err(GptError::NoHeader { sector });
    }
    let size = u32_at(&header, header::HEADER_SIZE) as usize;
    if !(MIN_HEADER_SIZE..=sector as usize).contains(&size) {
        return Err(GptError::BadHeader(format!("header size {size}")));
    }
    let stored = u32_at(&header, header::HEADER_CRC);
    let mut check = header.clone();
    seal_header(&mut check);
    if u32_at(&check, header::HEADER_CRC) != stored {
        return Err(GptError::BadHeader("its CRC32 does not match".into()));
    }
    if u64_at(&header, header::MY_LBA) != 1 {
        return Err(GptError::BadHeader("it does not say it is at LBA 1".into()));
    }
    let entry_size = u32_at(&header, header::ENTRY_SIZE) as usize;
    let entry_count = u32_at(&header, header::ENTRY_COUNT) as usize;
    // The specification: a multiple of 128, and real tables use 128 entries of 128 bytes;
    // the bound keeps a damaged header from asking for gigabytes.
    if entry_size < 128 || !entry_size.is_multiple_of(128) || entry_size * entry_count > (1 << 20) {
        return Err(GptError::BadHeader(format!(
            "{entry_count} entries of {entry_size} bytes"
        )));
    }
    let mut entries = vec![0u8; entry_size * entry_count];
    read_at(
        disk,
        u64_at(&header, header::ENTRIES_LBA) * sector,
        &mut entries,
    )?;
    if crc32fast::hash(&entries) != u32_at(&header, header::ENTRIES_CRC) {
        return Err(GptError::BadEntries);
    }
    Ok(Table {
        header,
        entries,
        entry_size,
        entry_count,
    })
}

/// The GPT partitions of a disk: (number, name, first LBA, last LBA), in entry order.
pub fn partitions<D: Read + Seek>(
    disk: &mut D,
    sector: u64,
) -> Result<Vec<(u32, String, u64, u64)>, GptError> {
    let t = read_table(disk, sector)?;
    Ok((0..t.entry_count)
        .map(|i| &t.entries[i * t.entry_size..(i + 1) * t.entry_size])
        .enumerate()
        .filter(|(_, e)| is_used(e))
        .map(|(i, e)| {
            (
                i as u32 + 1,
                entry_name(e),
                u64_at(e, entry::FIRST_LBA),
                u64_at(e, entry::LAST_LBA),
            )
        })
        .collect())
}

/// Moves the backup GPT to the end of `disk` (whose size is where its end seeks to),
/// extends partition `root` to the new last usable LBA and writes both tables and the
/// protective MBR. `sector` is the disk's logical block size.
///
/// Writes the backup copy first and the primary last, so an interruption leaves a valid
/// primary table behind (the old or the new one). Does not flush: the caller syncs.
pub fn grow<D: Read + Write + Seek>(
    disk: &mut D,
    sector: u64,
    root: &str,
) -> Result<Grown, GptError> {
    let disk_bytes = disk.seek(SeekFrom::End(0)).map_err(|source| GptError::Io {
        what: "size",
        source,
    })?;
    let disk_sectors = disk_bytes / sector;
    let mut t = read_table(disk, sector)?;

    // The partition to grow: exactly one with the name, and none ending after it.
    let used: Vec<(usize, String, u64, u64)> = (0..t.entry_count)
        .filter_map(|i| {
            let e = &t.entries[i * t.entry_size..(i + 1) * t.entry_size];
            is_used(e).then(|| {
                (
                    i,
                    entry_name(e),
                    u64_at(e, entry::FIRST_LBA),
                    u64_at(e, entry::LAST_LBA),
                )
            })
        })
        .collect();
    let named: Vec<&(usize, String, u64, u64)> =
        used.iter().filter(|(_, name, ..)| name == root).collect();
    let &(index, _, first_lba, old_last_lba) = match named.as_slice() {
        [one] => *one,
        [] => {
            return Err(GptError::NoRoot {
                name: root.to_string(),
                names: used
                    .iter()
                    .map(|(i, n, ..)| format!("{} {n:?}", i + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        many => {
            return Err(GptError::ManyRoots {
                name: root.to_string(),
                count: many.len(),
            })
        }
    };
    if let Some((after, ..)) = used
        .iter()
        .filter(|(i, ..)| *i != index)
        .find(|(_, _, first, last)| *last >= old_last_lba || *first > first_lba)
    {
        return Err(GptError::RootNotLast {
            name: root.to_string(),
            number: index as u32 + 1,
            after: *after as u32 + 1,
        });
    }

    let entries_sectors = (t.entries.len() as u64).div_ceil(sector);
    let old_alternate = u64_at(&t.header, header::ALTERNATE_LBA);
    let last_lba = disk_sectors.saturating_sub(1);
    let backup_entries_lba = last_lba.saturating_sub(entries_sectors);
    let last_usable = backup_entries_lba.saturating_sub(1);
    if last_usable < old_last_lba || last_usable < u64_at(&t.header, header::FIRST_USABLE) {
        return Err(GptError::DiskTooSmall {
            disk_sectors,
            needed: old_last_lba + entries_sectors + 2,
        });
    }

    // The partition, then the entries' CRC, then both headers.
    let e = &mut t.entries[index * t.entry_size..(index + 1) * t.entry_size];
    put_u64(e, entry::LAST_LBA, last_usable);
    let entries_crc = crc32fast::hash(&t.entries);
    let mut primary = t.header.clone();
    put_u64(&mut primary, header::ALTERNATE_LBA, last_lba);
    put_u64(&mut primary, header::LAST_USABLE, last_usable);
    put_u32(&mut primary, header::ENTRIES_CRC, entries_crc);
    seal_header(&mut primary);
    let mut backup = primary.clone();
    put_u64(&mut backup, header::MY_LBA, last_lba);
    put_u64(&mut backup, header::ALTERNATE_LBA, 1);
    put_u64(&mut backup, header::ENTRIES_LBA, backup_entries_lba);
    seal_header(&mut backup);

    write_at(disk, backup_entries_lba * sector, &t.entries)?;
    write_at(disk, last_lba * sector, &backup)?;
    write_at(
        disk,
        u64_at(&primary, header::ENTRIES_LBA) * sector,
        &t.entries,
    )?;
    write_at(disk, sector, &primary)?;
    // The image's own backup header, now inside the grown partition (past its filesystem,
    // which ends where the partition ended): zeroed, so no tool finds a stale GPT there.
    if old_alternate != last_lba && old_alternate > old_last_lba && old_alternate < last_lba {
        write_at(disk, old_alternate * sector, &vec![0u8; sector as usize])?;
    }
    update_protective_mbr(disk, disk_sectors)?;
    Ok(Grown {
        number: index as u32 + 1,
        first_lba,
        old_last_lba,
        new_last_lba: last_usable,
        disk_sectors,
        sector,
    })
}

/// The protective MBR's 0xEE partition must cover the disk (up to 2^32-1 sectors). The
/// boot code before it (a BIOS boot loader) is left alone.
fn update_protective_mbr<D: Read + Write + Seek>(
    disk: &mut D,
    disk_sectors: u64,
) -> Result<(), GptError> {
    let mut mbr = [0u8; 512];
    read_at(disk, 0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(());
    }
    let mut changed = false;
    for slot in 0..4 {
        let at = MBR_PARTITIONS + slot * 16;
        if mbr[at + 4] == PROTECTIVE_TYPE && u32_at(&mbr, at + 8) == 1 {
            let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
            put_u32(&mut mbr, at + 12, size);
            changed = true;
        }
    }
    if changed {
        write_at(disk, 0, &mbr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal valid GPT on `sectors` 512-byte sectors: partitions (name, first, last).
    fn disk(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * 512) as usize];
        d[510] = 0x55;
        d[511] = 0xaa;
        d[MBR_PARTITIONS + 4] = PROTECTIVE_TYPE;
        put_u32(&mut d, MBR_PARTITIONS + 8, 1);
        put_u32(&mut d, MBR_PARTITIONS + 12, (sectors - 1) as u32);
        let mut entries = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 0xaf; // any non-zero type GUID
            e[16] = i as u8 + 1;
            put_u64(e, entry::FIRST_LBA, *first);
            put_u64(e, entry::LAST_LBA, *last);
            for (j, u) in name.encode_utf16().enumerate() {
                e[entry::NAME + 2 * j..entry::NAME + 2 * j + 2].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(SIGNATURE);
        put_u32(&mut h, 8, 0x0001_0000);
        put_u32(&mut h, header::HEADER_SIZE, 92);
        put_u64(&mut h, header::MY_LBA, 1);
        put_u64(&mut h, header::ALTERNATE_LBA, sectors - 1);
        put_u64(&mut h, header::FIRST_USABLE, 34);
        put_u64(&mut h, header::LAST_USABLE, sectors - 34);
        put_u64(&mut h, header::ENTRIES_LBA, 2);
        put_u32(&mut h, header::ENTRY_COUNT, 128);
        put_u32(&mut h, header::ENTRY_SIZE, 128);
        put_u32(&mut h, header::ENTRIES_CRC, crc32fast::hash(&entries));
        seal_header(&mut h);
        d[512..1024].copy_from_slice(&h);
        d[1024..1024 + entries.len()].copy_from_slice(&entries);
        let mut b = h.clone();
        put_u64(&mut b, header::MY_LBA, sectors - 1);
        put_u64(&mut b, header::ALTERNATE_LBA, 1);
        put_u64(&mut b, header::ENTRIES_LBA, sectors - 33);
        seal_header(&mut b);
        let at = ((sectors - 33) * 512) as usize;
        d[at..at + entries.len()].copy_from_slice(&entries);
        let at = ((sectors - 1) * 512) as usize;
        d[at..at + 512].copy_from_slice(&b);
        d
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup() {
        let mut d = disk(1000, &[("esp", 34, 99), ("root", 100, 966)]);
        d.resize(4000 * 512, 0);
        let mut c = Cursor::new(d);
        let g = grow(&mut c, 512, "root").unwrap();
        assert_eq!(
            g,
            Grown {
                number: 2,
                first_lba: 100,
                old_last_lba: 966,
                new_last_lba: 3966,
                disk_sectors: 4000,
                sector: 512
            }
        );
        let d = c.into_inner();
        // Both headers are valid and point at each other.
        let mut c = Cursor::new(d.clone());
        let t = read_table(&mut c, 512).unwrap();
        assert_eq!(u64_at(&t.header, header::ALTERNATE_LBA), 3999);
        assert_eq!(u64_at(&t.header, header::LAST_USABLE), 3966);
        let b = &d[3999 * 512..4000 * 512];
        assert_eq!(&b[..8], SIGNATURE);
        let mut check = b.to_vec();
        seal_header(&mut check);
        assert_eq!(
            u32_at(&check, header::HEADER_CRC),
            u32_at(b, header::HEADER_CRC)
        );
        assert_eq!(u64_at(b, header::MY_LBA), 3999);
        assert_eq!(u64_at(b, header::ENTRIES_LBA), 3967);
        assert_eq!(&d[3967 * 512..3967 * 512 + 128 * 128], &t.entries[..]);
        // The old backup header is gone; the protective MBR covers the disk.
        assert!(d[999 * 512..1000 * 512].iter().all(|&b| b == 0));
        assert_eq!(u32_at(&d, MBR_PARTITIONS + 12), 3999);
        let parts = partitions(&mut Cursor::new(d.clone()), 512).unwrap();
        assert_eq!(
            parts,
            vec![
                (1, "esp".to_string(), 34, 99),
                (2, "root".to_string(), 100, 3966)
            ]
        );
        // Growing again changes nothing.
        let mut c = Cursor::new(d.clone());
        grow(&mut c, 512, "root").unwrap();
        assert_eq!(c.into_inner(), d);
    }

    #[test]
    fn refuses_a_root_that_is_not_last_and_a_missing_one() {
        let mut d = disk(1000, &[("root", 34, 500), ("esp", 501, 966)]);
        let before = d.clone();
        d.resize(2000 * 512, 0);
        let e = grow(&mut Cursor::new(d.clone()), 512, "root").unwrap_err();
        assert!(
            matches!(
                e,
                GptError::RootNotLast {
                    number: 1,
                    after: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("not the last partition"), "{e}");
        let e = grow(&mut Cursor::new(d.clone()), 512, "data").unwrap_err();
        assert!(e.to_string().contains("1 \"root\", 2 \"esp\""), "{e}");
        // Nothing was written.
        let mut c = Cursor::new(d);
        let _ = grow(&mut c, 512, "root");
        assert_eq!(&c.into_inner()[..before.len()], &before[..]);
    }

    #[test]
    fn refuses_damaged_tables_and_other_sector_sizes() {
        let mut d = disk(1000, &[("root", 34, 966)]);
        assert!(matches!(
            grow(&mut Cursor::new(d.clone()), 4096, "root"),
            Err(GptError::NoHeader { sector: 4096 })
        ));
        d[1024 + 40] ^= 1; // an entry's last LBA
        assert!(matches!(
            grow(&mut Cursor::new(d.clone()), 512, "root"),
            Err(GptError::BadEntries)
        ));
        d[512 + 40] ^= 1; // the header's first usable LBA
        assert!(matches!(
            grow(&mut Cursor::new(d), 512, "root"),
            Err(GptError::BadHeader(_))
        ));
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused() {
        let mut d = disk(1000, &[("root", 34, 966)]);
        d.truncate(900 * 512);
        assert!(matches!(
            grow(&mut Cursor::new(d), 512, "root"),
            Err(GptError::DiskTooSmall { .. })
        ));
    }
}
