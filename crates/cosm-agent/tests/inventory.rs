//! Integration tests of `cosm_agent::inventory`: the two fixture trees under
//! `tests/fixtures/` checked field by field, edge cases built in temporary roots, the real
//! `/` of the machine running the tests, and the `cosm-agent inventory` command.

use cosm_agent::inventory::{read_inventory, summary, InventoryError};
use cosm_wire::{Cpu, Disk, Dmi, FirmwareMode, Inventory, MacAddr, Nic};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("test MAC")
}

/// Writes `content` to `root/rel`, creating parent directories.
fn put(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(&path, content).expect("write");
}

fn qemu_vm_expected() -> Inventory {
    Inventory {
        cpu: Cpu {
            model: "QEMU Virtual CPU version 2.5+".to_string(),
            sockets: 1,
            cores: 2,
            threads: 2,
        },
        memory_bytes: 2_030_652 * 1024,
        disks: vec![Disk {
            name: "vda".to_string(),
            size_bytes: 41_943_040 * 512,
            model: None,
            serial: None,
            rotational: true,
        }],
        nics: vec![Nic {
            name: "ens3".to_string(),
            mac: mac("52:54:00:12:34:56"),
            link_up: true,
            speed_mbps: None,
        }],
        dmi: Dmi {
            vendor: Some("QEMU".to_string()),
            product: Some("Standard PC (i440FX + PIIX, 1996)".to_string()),
            serial: None,
            system_uuid: Some("8b5d1a2e-3c4f-4e6a-9b7c-0d1e2f3a4b5c".to_string()),
        },
        firmware: Some(FirmwareMode::Bios),
        kernel: Some("6.1.0-27-amd64".to_string()),
    }
}

#[test]
fn qemu_vm_fixture() {
    let inv = read_inventory(&fixture("qemu-vm")).expect("inventory");
    assert_eq!(inv, qemu_vm_expected());
    assert_eq!(inv.cpu_count(), 2);
    assert_eq!(inv.memory_bytes, 2_079_387_648);
    assert_eq!(inv.disks[0].size_bytes, 21_474_836_480);
}

#[test]
fn dell_server_fixture() {
    let inv = read_inventory(&fixture("dell-server")).expect("inventory");
    let hdd = |name: &str, serial: &str| Disk {
        name: name.to_string(),
        size_bytes: 7_814_037_168 * 512,
        model: Some("ST4000NM0035-1V4".to_string()),
        serial: Some(serial.to_string()),
        rotational: true,
    };
    let expected = Inventory {
        cpu: Cpu {
            model: "Intel(R) Xeon(R) Silver 4208 CPU @ 2.10GHz".to_string(),
            sockets: 2,
            cores: 4,
            threads: 8,
        },
        memory_bytes: 263_842_984 * 1024,
        disks: vec![
            Disk {
                name: "nvme0n1".to_string(),
                size_bytes: 1_875_385_008 * 512,
                model: Some("Dell Ent NVMe CM6 RI 960GB".to_string()),
                serial: Some("Y0A0A0B1C2D3".to_string()),
                rotational: false,
            },
            hdd("sda", "ZC1A2B3C"),
            hdd("sdb", "ZC1A2B4D"),
        ],
        nics: vec![
            Nic {
                name: "eno1".to_string(),
                mac: mac("b0:26:28:aa:bb:01"),
                link_up: true,
                speed_mbps: Some(10_000),
            },
            Nic {
                name: "eno2".to_string(),
                mac: mac("b0:26:28:aa:bb:02"),
                link_up: false,
                speed_mbps: None,
            },
        ],
        dmi: Dmi {
            vendor: Some("Dell Inc.".to_string()),
            product: Some("PowerEdge R640".to_string()),
            serial: Some("7XJ4Q33".to_string()),
            system_uuid: Some("4c4c4544-0058-4a10-8034-b7c04f513333".to_string()),
        },
        firmware: Some(FirmwareMode::Uefi),
        kernel: Some("5.14.0-427.13.1.el9_4.x86_64".to_string()),
    };
    assert_eq!(inv, expected);
    assert_eq!(inv.disks[0].size_bytes, 960_197_124_096);
    assert_eq!(inv.disks[1].size_bytes, 4_000_787_030_016);
    assert_eq!(inv.memory_bytes, 270_175_215_616);
}

#[test]
fn missing_root_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("no-such-root");
    let err = read_inventory(&root).expect_err("missing root must fail");
    let InventoryError::Root { path, source } = &err;
    assert_eq!(path, &root);
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains(&root.display().to_string()),
        "message {err} must name {}",
        root.display()
    );
}

#[test]
fn root_that_is_a_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("file");
    fs::write(&root, "not a directory").expect("write");
    let err = read_inventory(&root).expect_err("a file is not a root");
    assert!(err.to_string().contains(&root.display().to_string()));
}

#[test]
fn empty_root_gives_an_empty_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = read_inventory(dir.path()).expect("missing files are not errors");
    // No sys/firmware at all: sysfs not mounted, so the firmware is unknown, not BIOS.
    assert_eq!(inv, Inventory::default());
}

#[test]
fn dmi_placeholders_and_unreadable_files_are_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    put(
        root,
        "sys/class/dmi/id/sys_vendor",
        "To be filled by O.E.M.\n",
    );
    put(
        root,
        "sys/class/dmi/id/product_name",
        "  Default string  \n",
    );
    // Unreadable: reading a directory fails like a permission error would (the tests may
    // run as root, who can read a mode-0400 file).
    fs::create_dir_all(root.join("sys/class/dmi/id/product_serial")).expect("mkdir");
    put(
        root,
        "sys/class/dmi/id/product_uuid",
        "00000000-0000-0000-0000-000000000000\n",
    );
    assert_eq!(read_inventory(root).expect("inventory").dmi, Dmi::default());

    put(root, "sys/class/dmi/id/sys_vendor", "  Supermicro \n");
    put(
        root,
        "sys/class/dmi/id/product_name",
        "System Product Name\n",
    );
    put(
        root,
        "sys/class/dmi/id/product_uuid",
        "03000200-0400-0500-0006-000700080009\n",
    );
    let dmi = read_inventory(root).expect("inventory").dmi;
    assert_eq!(
        dmi,
        Dmi {
            vendor: Some("Supermicro".to_string()),
            ..Dmi::default()
        }
    );
}

#[test]
fn disk_edge_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    // virtio-blk with `-drive serial=`: the serial sits beside `size`.
    put(root, "sys/block/vdb/size", "2048\n");
    put(root, "sys/block/vdb/serial", "cosm-data-1");
    put(root, "sys/block/vdb/queue/rotational", "0\n");
    // device/serial wins over the other sources; an empty model is None; no rotational
    // file means not rotational.
    put(root, "sys/block/mmcblk0/size", "4096\n");
    put(root, "sys/block/mmcblk0/device/serial", "0x1234abcd\n");
    put(root, "sys/block/mmcblk0/serial", "ignored\n");
    put(root, "sys/block/mmcblk0/device/model", "   \n");
    // An empty serial everywhere is None; a vpd_pg80 page of spaces too.
    put(root, "sys/block/sdx/size", "8\n");
    put(root, "sys/block/sdx/device/serial", "\n");
    put(
        root,
        "sys/block/sdx/device/vpd_pg80",
        b"\x00\x80\x00\x04    ",
    );
    // Skipped: no size, an unparseable size, a hidden device, names that are not disks.
    put(root, "sys/block/sdy/queue/rotational", "1\n");
    put(root, "sys/block/sdz/size", "lots\n");
    put(root, "sys/block/nvme1c1n1/size", "4096\n");
    put(root, "sys/block/nvme1c1n1/hidden", "1\n");
    for name in ["zram0", "ram0", "md127", "fd0"] {
        put(root, &format!("sys/block/{name}/size"), "4096\n");
    }
    let disks = read_inventory(root).expect("inventory").disks;
    assert_eq!(
        disks,
        vec![
            Disk {
                name: "mmcblk0".to_string(),
                size_bytes: 4096 * 512,
                model: None,
                serial: Some("0x1234abcd".to_string()),
                rotational: false,
            },
            Disk {
                name: "sdx".to_string(),
                size_bytes: 8 * 512,
                model: None,
                serial: None,
                rotational: false,
            },
            Disk {
                name: "vdb".to_string(),
                size_bytes: 2048 * 512,
                model: None,
                serial: Some("cosm-data-1".to_string()),
                rotational: false,
            },
        ]
    );
}

#[test]
fn nic_edge_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let nic = |name: &str, files: &[(&str, &str)]| {
        put(
            root,
            &format!("sys/class/net/{name}/device/vendor"),
            "0x8086\n",
        );
        for (file, content) in files {
            put(root, &format!("sys/class/net/{name}/{file}"), content);
        }
    };
    // Carrier alone means link up (operstate "unknown" from drivers without RFC 2863).
    nic(
        "enp1s0",
        &[
            ("address", "AA:BB:CC:00:00:01\n"),
            ("operstate", "unknown\n"),
            ("carrier", "1\n"),
            ("speed", "4294967295\n"),
        ],
    );
    // Neither up nor carrier: down; speed 0 is no speed.
    nic(
        "enp2s0",
        &[
            ("address", "aa:bb:cc:00:00:02\n"),
            ("operstate", "dormant\n"),
            ("speed", "0\n"),
        ],
    );
    // A bond member reports its permanent address, not the bond's.
    nic(
        "enp3s0",
        &[
            ("address", "aa:bb:cc:00:00:01\n"),
            ("bonding_slave/perm_hwaddr", "aa:bb:cc:00:00:03\n"),
            ("operstate", "up\n"),
            ("speed", "25000\n"),
        ],
    );
    // Skipped: all-zero MAC, an InfiniBand address, no address at all.
    nic("enp4s0", &[("address", "00:00:00:00:00:00\n")]);
    nic(
        "ib0",
        &[(
            "address",
            "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:0b:0c\n",
        )],
    );
    nic("enp5s0", &[("operstate", "up\n")]);
    // Skipped: virtual interfaces (no device), even with a usable MAC.
    put(root, "sys/class/net/veth0/address", "aa:bb:cc:00:00:09\n");
    put(root, "sys/class/net/bond0/address", "aa:bb:cc:00:00:01\n");

    let nics = read_inventory(root).expect("inventory").nics;
    assert_eq!(
        nics,
        vec![
            Nic {
                name: "enp1s0".to_string(),
                mac: mac("aa:bb:cc:00:00:01"),
                link_up: true,
                speed_mbps: None,
            },
            Nic {
                name: "enp2s0".to_string(),
                mac: mac("aa:bb:cc:00:00:02"),
                link_up: false,
                speed_mbps: None,
            },
            Nic {
                name: "enp3s0".to_string(),
                mac: mac("aa:bb:cc:00:00:03"),
                link_up: true,
                speed_mbps: Some(25_000),
            },
        ]
    );
}

#[test]
fn cpu_without_topology_fields() {
    // arm64: no model name, no physical id, no cpu cores.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let block = "processor\t: {}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
                 CPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n";
    let text: String = (0..4)
        .map(|n| block.replace("{}", &n.to_string()))
        .collect();
    put(root, "proc/cpuinfo", text);
    let cpu = read_inventory(root).expect("inventory").cpu;
    assert_eq!(
        cpu,
        Cpu {
            model: String::new(),
            sockets: 1,
            cores: 4,
            threads: 4,
        }
    );
}

#[test]
fn this_machine() {
    let inv = read_inventory(Path::new("/")).expect("reading / must succeed");
    assert!(inv.cpu.threads >= 1, "no CPU found: {inv:#?}");
    assert!(inv.cpu.sockets >= 1 && inv.cpu.cores >= 1, "{inv:#?}");
    assert!(inv.memory_bytes > 0, "no memory found: {inv:#?}");
    assert!(inv.kernel.is_some(), "no kernel release: {inv:#?}");
    // What the agent reports must survive the wire.
    let json = serde_json::to_string(&inv).expect("serialise");
    let back: Inventory = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, inv);
}

#[test]
fn summary_lists_everything() {
    let text = summary(&read_inventory(&fixture("dell-server")).expect("inventory"));
    for needle in [
        "CPU       Intel(R) Xeon(R) Silver 4208 CPU @ 2.10GHz: 2 socket(s), 4 core(s), 8 thread(s)",
        "MEMORY    251.6 GiB",
        "FIRMWARE  uefi",
        "KERNEL    5.14.0-427.13.1.el9_4.x86_64",
        "SYSTEM    vendor Dell Inc., product PowerEdge R640, serial 7XJ4Q33, uuid 4c4c4544-",
        "nvme0n1",
        "894.3 GiB  SSD  model Dell Ent NVMe CM6 RI 960GB, serial Y0A0A0B1C2D3",
        "3.6 TiB  HDD  model ST4000NM0035-1V4, serial ZC1A2B3C",
        "eno1         b0:26:28:aa:bb:01  up 10000 Mb/s",
        "eno2         b0:26:28:aa:bb:02  down",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let empty = summary(&Inventory::default());
    assert!(empty.contains("DISKS     none") && empty.contains("NICS      none"));
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cosm-agent"))
}

#[test]
fn cli_json_is_the_wire_inventory() {
    let root = fixture("qemu-vm");
    let out = agent()
        .args(["inventory", "--json", "--root"])
        .arg(&root)
        .output()
        .expect("run cosm-agent");
    assert!(out.status.success(), "{out:?}");
    let inv: Inventory = serde_json::from_slice(&out.stdout).expect("JSON inventory");
    assert_eq!(inv, qemu_vm_expected());
}

#[test]
fn cli_summary_and_errors() {
    let out = agent()
        .args(["inventory", "--root"])
        .arg(fixture("qemu-vm"))
        .output()
        .expect("run cosm-agent");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ens3         52:54:00:12:34:56  up"),
        "{stdout}"
    );
    assert!(stdout.contains("FIRMWARE  bios"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("gone");
    let out = agent()
        .args(["inventory", "--root"])
        .arg(&missing)
        .output()
        .expect("run cosm-agent");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("No such file"),
        "{stderr}"
    );
}
