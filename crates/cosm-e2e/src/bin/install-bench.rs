//! `make bench` part: image installs, power-on → `active`, per firmware.
//!
//! A virtual rack (a network namespace with a bridge, the appliance on it) with the base
//! role image from `make os-image ROLE=base` uploaded with its manifest. For each firmware
//! (`--firmware`, all four by default), `--runs` new machines of role `base` are powered on
//! one after the other (so no two share the two cores), each with an empty 4 GiB disk, and
//! followed through the install:
//!
//! - power-on → the ramdisk kernel's first serial line (DHCP, iPXE, kernel and initrd);
//! - power-on → `deployed` (the image streamed and checked, files written, reported);
//! - power-on → `active` (rebooted into the installed Debian, whose agent beat);
//! - the streaming rate the installer reported (compressed and raw MiB/s).
//!
//! Printed: every run, and the p50 of each figure per firmware. Everything this run starts
//! lives in the namespace it deletes; processes are stopped by PID.

use anyhow::{bail, Context};
use clap::Parser;
use cosm_e2e::bench::{figure, print_report, Figure};
use cosm_e2e::netns::require_root_tools;
use cosm_e2e::rack::{Firmware, Rack};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Image installs on the virtual rack: power-on → ramdisk → deployed → active per firmware, and the streaming rate",
    long_about = "Image installs on the virtual rack: the base role image (make os-image ROLE=base) \
uploaded to a fresh appliance; for each firmware, new QEMU machines (-accel tcg, empty 4 GiB disk) \
of role base are powered on one at a time and followed from power-on to the ramdisk kernel, to \
`deployed` (image streamed, checked and reported) and to `active` (the installed Debian's agent \
beat). Prints each run and the p50s per firmware. Needs root."
)]
struct Args {
    /// Machines per firmware.
    #[arg(long, default_value_t = 1)]
    runs: u8,
    /// Which firmware, comma-separated: bios (SeaBIOS + iPXE ROM), uefi (OVMF + iPXE ROM),
    /// uefi-pxe (OVMF's PXE → snponly.efi), uefi-http (OVMF's HTTP Boot → snponly.efi).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bios,uefi,uefi-pxe,uefi-http"
    )]
    firmware: Vec<String>,
    /// Longest one install may take, power-on → active.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

fn firmware(name: &str) -> anyhow::Result<Firmware> {
    Ok(match name {
        "bios" => Firmware::BiosIpxeRom,
        "uefi" => Firmware::UefiIpxeRom,
        "uefi-pxe" => Firmware::UefiPxe,
        "uefi-http" => Firmware::UefiHttp,
        other => bail!("unknown firmware {other:?}: bios, uefi, uefi-pxe or uefi-http"),
    })
}

/// One install's figures, in seconds from power-on, and the installer's MiB/s.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    kernel: f64,
    deployed: f64,
    active: f64,
    compressed_mib_s: f64,
    raw_mib_s: f64,
}

/// "… (97.0 MiB/s compressed, 512.3 MiB/s raw)" → (97.0, 512.3).
fn rates(message: &str) -> Option<(f64, f64)> {
    let rate = |unit: &str| {
        let end = message.find(unit)?;
        let start = message[..end].rfind(['(', ' '])? + 1;
        message[start..end].trim().parse::<f64>().ok()
    };
    Some((rate(" MiB/s compressed")?, rate(" MiB/s raw")?))
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn install(rack: &mut Rack, n: u8, fw: Firmware, timeout: Duration) -> anyhow::Result<Run> {
    let mac = format!("52:54:00:c0:53:{n:02x}");
    let out = rack
        .app
        .cosmctl(&["machines", "add", &mac, "--role", "base"]);
    anyhow::ensure!(
        out.status.success(),
        "machines add {mac}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let since = Instant::now();
    let vm = rack.power_on(n, fw)?;
    let mut run = Run::default();
    loop {
        if run.kernel == 0.0 && rack.serial(vm).contains("Linux version") {
            run.kernel = since.elapsed().as_secs_f64();
        }
        let state = rack
            .app
            .api(&format!("/api/v1/machines/{mac}"))
            .map(|m| m["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        match state.as_str() {
            "deployed" if run.deployed == 0.0 => run.deployed = since.elapsed().as_secs_f64(),
            "active" => {
                run.active = since.elapsed().as_secs_f64();
                if run.deployed == 0.0 {
                    run.deployed = run.active;
                }
                break;
            }
            "failed" => bail!(
                "{mac} ({}) failed its install: {:#?}",
                fw.label(),
                rack.timeline(&mac)
            ),
            _ => {}
        }
        if since.elapsed() > timeout {
            let serial = rack.serial(vm);
            let tail: Vec<&str> = serial.lines().rev().take(30).collect();
            bail!(
                "{mac} ({}) was not active within {timeout:?} (state {state}); timeline {:#?}\nserial tail:\n{}",
                fw.label(),
                rack.timeline(&mac),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let finished = rack
        .timeline(&mac)
        .into_iter()
        .find(|(k, m)| k == "state_changed" && m.contains("install finished"))
        .map(|(_, m)| m)
        .context("no `install finished` on the timeline")?;
    (run.compressed_mib_s, run.raw_mib_s) =
        rates(&finished).with_context(|| format!("no MiB/s in {finished:?}"))?;
    rack.power_off(vm);
    Ok(run)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root_tools(&["ip", "qemu-system-x86_64", "curl"]);
    let firmwares = args
        .firmware
        .iter()
        .map(|f| firmware(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dir = cosm_e2e::rack::ramdisk_dir().join("os");
    let (image, manifest) = (
        dir.join("cosm-base-bookworm.img.zst"),
        dir.join("cosm-base-bookworm.manifest.json"),
    );
    anyhow::ensure!(
        image.exists() && manifest.exists(),
        "{} is missing: build it with `make os-image ROLE=base`",
        image.display()
    );
    eprintln!("install-bench: a virtual rack, the base image uploaded");
    let mut rack = Rack::start("inb", "")?;
    let app_pid = rack.app.pid();
    for a in [
        vec!["roles", "add", "base", "--description", "the base image"],
        vec![
            "images",
            "upload",
            image.to_str().unwrap_or_default(),
            "--manifest",
            manifest.to_str().unwrap_or_default(),
        ],
    ] {
        let out = rack.app.cosmctl(&a);
        anyhow::ensure!(
            out.status.success(),
            "cosmctl {}: {}",
            a.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let raw = std::fs::metadata(&image)?.len();
    let mut figures: Vec<Figure> = Vec::new();
    figure(
        &mut figures,
        "image",
        format!(
            "cosm-base-bookworm.img.zst, {:.1} MiB compressed",
            raw as f64 / 1048576.0
        ),
    );
    let mut n = 40u8;
    let mut pids = vec![app_pid];
    for fw in firmwares {
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let r = install(&mut rack, n, fw, Duration::from_secs(args.timeout_secs))?;
            pids.push(rack.vms.last().map(|v| v.pid).unwrap_or(0));
            n += 1;
            eprintln!(
                "  {} run {}: kernel {:.1} s, deployed {:.1} s, active {:.1} s, streaming {:.1} MiB/s compressed ({:.1} raw)",
                fw.label(),
                i + 1,
                r.kernel,
                r.deployed,
                r.active,
                r.compressed_mib_s,
                r.raw_mib_s
            );
            runs.push(r);
        }
        let p = |f: fn(&Run) -> f64| p50(runs.iter().map(f).collect());
        figure(
            &mut figures,
            format!("{}: power-on → ramdisk kernel (p50)", fw.label()),
            format!("{:.1} s", p(|r| r.kernel)),
        );
        figure(
            &mut figures,
            format!("{}: power-on → deployed (p50)", fw.label()),
            format!("{:.1} s", p(|r| r.deployed)),
        );
        figure(
            &mut figures,
            format!("{}: power-on → active (p50)", fw.label()),
            format!("{:.1} s", p(|r| r.active)),
        );
        figure(
            &mut figures,
            format!("{}: image streaming (p50)", fw.label()),
            format!(
                "{:.1} MiB/s compressed, {:.1} MiB/s raw",
                p(|r| r.compressed_mib_s),
                p(|r| r.raw_mib_s)
            ),
        );
    }
    drop(rack);
    let left: Vec<String> = pids
        .into_iter()
        .filter(|p| *p != 0 && cosm_e2e::bench::alive(*p))
        .map(|p| p.to_string())
        .collect();
    print_report(
        &format!(
            "install-bench: image installs, {} run(s) per firmware, QEMU TCG",
            args.runs
        ),
        &figures,
        "the appliance and QEMU machines",
        &left,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installers_rates_are_read() {
        assert_eq!(
            rates("install finished: cosm-base-bookworm.img.zst (97.2 MB, 514 MiB raw) written to /dev/vda in 9.1 s (10.2 MiB/s compressed, 56.5 MiB/s raw)"),
            Some((10.2, 56.5))
        );
        assert_eq!(rates("install finished: no figures"), None);
    }
}
