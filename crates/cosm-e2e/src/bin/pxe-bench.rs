//! `make bench` part: PXE power-on → agent ramdisk, COSM against dnsmasq serving the same
//! kernel and initrd.
//!
//! A QEMU machine (`-accel tcg`, SeaBIOS with the NIC's iPXE ROM by default; `--firmware
//! uefi` for OVMF with it) is powered on with an empty disk, `--runs` times (3 by default,
//! a fresh MAC each time, so every boot is a new machine's), against each server, on a
//! virtual rack segment (a network namespace with a bridge, IPv6 on it):
//!
//! - `cosm`: the appliance as the rack's DHCP server with its router advertisements on (the
//!   default in authoritative mode): DHCP, the per-machine iPXE script, kernel and initrd
//!   over HTTP;
//! - `cosm-no-ra`: the same with `dhcp.router_advertisements = false`;
//! - `dnsmasq`: dnsmasq alone as the segment's DHCP and TFTP server, handing iPXE a script
//!   that loads the same `vmlinuz` and `initramfs.img` over TFTP, with the same kernel
//!   console arguments;
//! - `dnsmasq-http`: dnsmasq for DHCP and the script, the kernel and initrd over HTTP from a
//!   static file server (`python3 -m http.server`), as dnsmasq setups that boot large
//!   images usually do.
//!
//! The figure is power-on (just before QEMU starts) → the ramdisk kernel's first line on
//! the serial console (`Linux version`): by then iPXE has fetched both kernel and initrd.
//! Printed: every run, the p50 per server, and each p50 against dnsmasq's. Everything this
//! run starts lives in namespaces it deletes; the processes are stopped by PID.

use anyhow::{bail, Context};
use clap::Parser;
use cosm_e2e::bench::alive;
use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::rack::{self, Firmware, Rack};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "PXE power-on → agent ramdisk: COSM against dnsmasq")]
struct Args {
    /// Boots per server.
    #[arg(long, default_value_t = 3)]
    runs: u8,
    /// `bios` (SeaBIOS + iPXE ROM), `uefi` (OVMF + iPXE ROM) or `uefi-pxe` (OVMF's own
    /// PXE, which TFTP-loads snponly.efi; COSM only: the dnsmasq setups here serve iPXE
    /// clients).
    #[arg(long, default_value = "bios")]
    firmware: String,
    /// Which servers, comma-separated: cosm, cosm-no-ra, dnsmasq, dnsmasq-http.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cosm,cosm-no-ra,dnsmasq,dnsmasq-http"
    )]
    servers: Vec<String>,
    /// Longest a boot may take before the run counts as failed.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
    /// Print each server's first boot's serial console up to the kernel's first line
    /// (what the firmware and iPXE said).
    #[arg(long)]
    show_serial: bool,
}

/// The serial console up to the kernel's first line, for `--show-serial`.
fn show_serial(args: &Args, server: &str, run: u8, serial: &Path) {
    if !args.show_serial || run != 0 {
        return;
    }
    let text = String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).into_owned();
    let end = text.find(KERNEL_FIRST_LINE).unwrap_or(text.len());
    eprintln!(
        "--- {server}: serial console of the first boot ---\n{}\n---",
        &text[..end]
    );
}

/// What the ramdisk kernel prints first on its serial console.
const KERNEL_FIRST_LINE: &str = "Linux version";

/// The kernel arguments COSM's ramdisk script gives (`boot.kernel_args`' default), so the
/// kernel prints the same to the same console.
const CONSOLE_ARGS: &str = "console=tty0 console=ttyS0,115200";

/// Power-on → the kernel's first serial line, for one machine that is already starting.
fn wait_kernel(
    serial: &Path,
    pid: u32,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let text = std::fs::read(serial).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(KERNEL_FIRST_LINE) {
            return Ok(since.elapsed());
        }
        if !alive(pid) {
            bail!("QEMU [{pid}] exited before the kernel ran");
        }
        if since.elapsed() > timeout {
            let tail: String = String::from_utf8_lossy(&text)
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "the ramdisk kernel did not start within {timeout:?}; serial console tail:\n{tail}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// COSM: a virtual rack's appliance; `runs` new machines, one after the other.
fn cosm(
    args: &Args,
    firmware: Firmware,
    ra: bool,
    first: u8,
    pids: &mut Vec<u32>,
) -> anyhow::Result<(Vec<Duration>, String)> {
    let mut rack = Rack::start_with(if ra { "pxc" } else { "pxn" }, "", ra)?;
    pids.push(rack.app.pid());
    let mut times = Vec::new();
    for i in 0..args.runs {
        let since = Instant::now();
        let vm = rack.power_on(first + i, firmware)?;
        pids.push(rack.vms[vm].pid);
        let t = wait_kernel(
            &rack.vms[vm].serial,
            rack.vms[vm].pid,
            since,
            Duration::from_secs(args.timeout_secs),
        )
        .with_context(|| {
            format!(
                "COSM run {}; appliance log:\n{}",
                i + 1,
                rack.app.log_text()
            )
        });
        show_serial(
            args,
            if ra { "cosm" } else { "cosm-no-ra" },
            i,
            &rack.vms[vm].serial,
        );
        rack.power_off(vm);
        times.push(t?);
        eprintln!(
            "  cosm{} run {}: {:.1} s",
            if ra { "" } else { "-no-ra" },
            i + 1,
            times[times.len() - 1].as_secs_f64()
        );
    }
    // What the appliance's router advertisements did meanwhile, from its /metrics.
    let metrics = rack.app.metrics().unwrap_or_default();
    let ra_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cosm_ra_") && !l.starts_with('#'))
        .collect();
    Ok((times, ra_lines.join("; ")))
}

/// dnsmasq: DHCP and TFTP for the segment, a script that loads the ramdisk over TFTP (or,
/// with `http`, over HTTP from `python3 -m http.server`).
fn dnsmasq(
    args: &Args,
    firmware: Firmware,
    http: bool,
    first: u8,
    pids: &mut Vec<u32>,
) -> anyhow::Result<Vec<Duration>> {
    let ns = NetNs::new(if http { "pxh" } else { "pxd" })?;
    rack::provisioning_bridge(&ns)?;
    let dir = tempfile::Builder::new().prefix("pxe-bench").tempdir()?;
    let root = dir.path().join("tftp");
    std::fs::create_dir(&root)?;
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::copy(rack::ramdisk_dir().join(f), root.join(f))
            .with_context(|| format!("cannot copy {f} from {}", rack::ramdisk_dir().display()))?;
    }
    let base = if http {
        "http://192.0.2.1:8081"
    } else {
        "tftp://192.0.2.1"
    };
    // UEFI kernels find their initrd by name in iPXE's image list (as COSM's script does).
    let initrd_arg = if firmware == Firmware::BiosIpxeRom {
        ""
    } else {
        " initrd=initramfs.img"
    };
    std::fs::write(
        root.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel {base}/vmlinuz{initrd_arg} {CONSOLE_ARGS}\ninitrd --name initramfs.img {base}/initramfs.img\nboot\n"
        ),
    )?;
    let mut d = ns.command("dnsmasq");
    d.arg("--keep-in-foreground")
        .arg("--conf-file=/dev/null")
        .arg("--port=0")
        .arg("--interface=br0")
        .arg("--bind-interfaces")
        .arg("--user=root")
        .arg("--dhcp-authoritative")
        .arg("--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,1h")
        .arg("--dhcp-option=option:router,192.0.2.1")
        .arg("--dhcp-boot=boot.ipxe")
        .arg("--enable-tftp")
        .arg(format!("--tftp-root={}", root.display()))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .arg(format!(
            "--log-facility={}",
            dir.path().join("dnsmasq.log").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    pids.push(ns.spawn(d)?);
    if http {
        let mut py = ns.command("python3");
        py.args([
            "-m",
            "http.server",
            "--bind",
            "192.0.2.1",
            "8081",
            "--directory",
        ])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        pids.push(ns.spawn(py)?);
    }
    // dnsmasq and the file server bind at once; give them a moment, outside the figures.
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for i in 0..args.runs {
        let since = Instant::now();
        let vm = rack::spawn_machine(&ns, dir.path(), first + i, firmware)?;
        pids.push(vm.pid);
        let t = wait_kernel(
            &vm.serial,
            vm.pid,
            since,
            Duration::from_secs(args.timeout_secs),
        )
        .with_context(|| {
            format!(
                "dnsmasq run {}; its log:\n{}",
                i + 1,
                std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default()
            )
        });
        show_serial(
            args,
            if http { "dnsmasq-http" } else { "dnsmasq" },
            i,
            &vm.serial,
        );
        let _ = ns.kill(vm.pid);
        times.push(t?);
        eprintln!(
            "  dnsmasq{} run {}: {:.1} s",
            if http { "-http" } else { "" },
            i + 1,
            times[times.len() - 1].as_secs_f64()
        );
    }
    Ok(times)
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root_tools(&["ip", "qemu-system-x86_64", "dnsmasq", "python3", "curl"]);
    rack::require_rack_parts()?;
    let firmware = match args.firmware.as_str() {
        "bios" => Firmware::BiosIpxeRom,
        "uefi" => Firmware::UefiIpxeRom,
        "uefi-pxe" => Firmware::UefiPxe,
        other => bail!("--firmware {other:?}: bios, uefi or uefi-pxe"),
    };
    if args.runs == 0 || args.runs > 20 {
        bail!("--runs must be 1..=20");
    }
    if args.servers.len() * usize::from(args.runs) > 99 {
        bail!("at most 99 boots in one run (machine numbers 1..=99)");
    }
    eprintln!(
        "PXE power-on → ramdisk kernel, {} ({} runs per server)",
        firmware.label(),
        args.runs
    );
    let mut pids = Vec::new();
    // (server, times or the failure, note)
    let mut rows: Vec<(String, Result<Vec<Duration>, String>, String)> = Vec::new();
    for (k, server) in args.servers.iter().enumerate() {
        // Machine numbers differ between servers too, so no MAC is seen twice.
        let first = 1 + (k as u8) * args.runs;
        let result = match server.as_str() {
            "cosm" | "cosm-no-ra" => cosm(&args, firmware, server == "cosm", first, &mut pids),
            "dnsmasq" => {
                dnsmasq(&args, firmware, false, first, &mut pids).map(|t| (t, String::new()))
            }
            "dnsmasq-http" => {
                dnsmasq(&args, firmware, true, first, &mut pids).map(|t| (t, String::new()))
            }
            other => bail!("unknown server {other:?}: cosm, cosm-no-ra, dnsmasq, dnsmasq-http"),
        };
        match result {
            Ok((t, note)) => rows.push((server.clone(), Ok(t), note)),
            Err(e) => {
                eprintln!("  {server} FAILED: {e:#}");
                rows.push((server.clone(), Err(format!("{e:#}")), String::new()))
            }
        }
    }
    let baseline = rows
        .iter()
        .find(|(s, t, _)| s == "dnsmasq" && t.is_ok())
        .and_then(|(_, t, _)| t.as_ref().ok().map(|t| median(t)));
    println!();
    println!(
        "PXE power-on → agent ramdisk kernel running ({}, QEMU TCG); figures are noisy: a shared 2-core machine",
        firmware.label()
    );
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["server", "runs (s)", "p50 (s)", "p50 / dnsmasq p50"]);
    for (server, times, _) in &rows {
        match times {
            Ok(t) => {
                let runs: Vec<String> = t
                    .iter()
                    .map(|d| format!("{:.1}", d.as_secs_f64()))
                    .collect();
                let p50 = median(t);
                let ratio = baseline
                    .map(|b| format!("{:.2}×", p50.as_secs_f64() / b.as_secs_f64()))
                    .unwrap_or_else(|| "-".into());
                table.add_row([
                    server.clone(),
                    runs.join(", "),
                    format!("{:.1}", p50.as_secs_f64()),
                    ratio,
                ]);
            }
            Err(e) => {
                table.add_row([
                    server.clone(),
                    format!("FAILED: {}", e.lines().next().unwrap_or("")),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    println!("{table}");
    for (server, _, note) in &rows {
        if !note.is_empty() {
            println!("{server}: {note}");
        }
    }
    println!("goal: cosm p50 ≤ 0.6 × dnsmasq p50 (the issue's)");
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<String> = pids
        .iter()
        .filter(|p| alive(**p))
        .map(|p| p.to_string())
        .collect();
    if left.is_empty() {
        println!("all {} processes this run started are gone", pids.len());
    } else {
        println!("LEFT RUNNING: {}", left.join(", "));
    }
    if rows.iter().any(|(_, t, _)| t.is_err()) {
        bail!("some servers failed (see above)");
    }
    Ok(())
}
