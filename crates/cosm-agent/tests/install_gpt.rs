//! The GPT grow of `cosm-agent install` against the real tools: tables made by sfdisk,
//! copied onto a bigger "disk", grown, then judged by `sfdisk --verify`, `sfdisk --json`
//! and `sgdisk -v` (util-linux, gdisk).

mod support;

use cosm_agent::install::gpt::{grow, GptError};
use support::*;

const MIB: u64 = 1 << 20;

/// An image of `image` bytes with sfdisk's table, copied to the start of a `disk`-byte
/// file; the file.
fn image_on_bigger_disk(
    dir: &std::path::Path,
    image: u64,
    disk: u64,
    parts: &[&str],
) -> std::path::PathBuf {
    let img = dir.join("image.raw");
    sfdisk_gpt(&img, image, parts);
    let bytes = std::fs::read(&img).unwrap();
    let disk_path = dir.join("disk.raw");
    std::fs::write(&disk_path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk_path)
        .unwrap()
        .set_len(disk)
        .unwrap();
    disk_path
}

#[test]
fn a_grown_table_is_valid_and_root_ends_at_the_last_usable_lba() {
    need("sfdisk", "fdisk");
    need("sgdisk", "gdisk");
    let t = tempfile::tempdir().unwrap();
    let parts = [
        &format!(
            "start=2048, size=16384, type={ESP_TYPE}, name=\"esp\", attrs=\"LegacyBIOSBootable\""
        )[..],
        &format!("type={LINUX_TYPE}, name=\"root\"")[..],
    ];
    let disk = image_on_bigger_disk(t.path(), 64 * MIB, 200 * MIB + 4096, &parts);
    let before = sfdisk_json(&disk);

    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let grown = grow(&mut f, 512, "root").unwrap();
    f.sync_all().unwrap();
    drop(f);

    assert_table_valid(&disk);
    let after = sfdisk_json(&disk);
    let sectors = (200 * MIB + 4096) / 512;
    // The last usable LBA is where a backup at the disk's very end puts it: 128 entries of
    // 128 bytes (32 sectors) and the header (1) after it.
    assert_eq!(after["lastlba"], sectors - 34, "{after:#}");
    assert_eq!(after["firstlba"], before["firstlba"]);
    assert_eq!(after["id"], before["id"], "the disk GUID is kept");
    let (p0, p1) = (&after["partitions"][0], &after["partitions"][1]);
    assert_eq!(p0, &before["partitions"][0], "the ESP is untouched");
    assert_eq!(p1["name"], "root");
    assert_eq!(p1["start"], before["partitions"][1]["start"]);
    assert_eq!(p1["uuid"], before["partitions"][1]["uuid"]);
    let end = p1["start"].as_u64().unwrap() + p1["size"].as_u64().unwrap() - 1;
    assert_eq!(
        end,
        sectors - 34,
        "root ends at the last usable LBA: {after:#}"
    );
    assert_eq!((grown.number, grown.new_last_lba), (2, sectors - 34));
    assert_eq!(grown.disk_sectors, sectors);

    // The backup header is in the last sector and says so.
    let bytes = std::fs::read(&disk).unwrap();
    let last = &bytes[bytes.len() - 512..];
    assert_eq!(&last[..8], b"EFI PART");
    assert_eq!(
        u64::from_le_bytes(last[24..32].try_into().unwrap()),
        sectors - 1
    );
    // sgdisk agrees on where everything is.
    let (out, _) = output(std::process::Command::new("sgdisk").arg("-p").arg(&disk));
    assert!(
        out.contains(&format!("last usable sector is {}", sectors - 34)),
        "{out}"
    );
}

#[test]
fn a_root_that_is_not_last_is_refused_and_nothing_changes() {
    need("sfdisk", "fdisk");
    let t = tempfile::tempdir().unwrap();
    let parts = [
        &format!("start=2048, size=40960, type={LINUX_TYPE}, name=\"root\"")[..],
        &format!("type={ESP_TYPE}, name=\"esp\"")[..],
    ];
    let disk = image_on_bigger_disk(t.path(), 64 * MIB, 128 * MIB, &parts);
    let before = std::fs::read(&disk).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let e = grow(&mut f, 512, "root").unwrap_err();
    drop(f);
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
    assert_eq!(
        e.to_string(),
        "partition 1 (\"root\") is not the last partition: partition 2 ends after it, so it \
         cannot be grown to the end of the disk"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the disk was changed"
    );
}
