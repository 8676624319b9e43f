//! `cosmctl images …`: the image repository (installer kernels, initrds, ISOs).

use crate::output::{print_table, table, time, Ctx};
use anyhow::{Context, Result};
use clap::Subcommand;
use cosm_wire::{human_bytes, Image};
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Subcommands of `cosmctl images`.
#[derive(Debug, Subcommand)]
pub(crate) enum ImagesCmd {
    /// Upload a file (streamed; its sha256 is computed first and checked by the appliance,
    /// which keeps nothing if they differ). Progress goes to stderr.
    Upload {
        /// The file to upload.
        file: PathBuf,
        /// Name in the repository (default: the file name). Installer kernels and initrds
        /// are looked up as `<release>-vmlinuz` and `<release>-initrd.img`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images.
    #[command(visible_alias = "ls")]
    List,
    /// Show one image's record.
    Show { name: String },
    /// Delete an image (its record and its file).
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

/// Reads a file while printing how far it got (on a terminal, in place; else every 10 %).
struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    what: &'static str,
    last_shown: u64,
    started: Instant,
    tty: bool,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
        let step = if self.tty { 1 } else { 10 };
        if pct >= self.last_shown + step || (n == 0 && self.last_shown < 100) {
            self.last_shown = pct;
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            let line = format!(
                "{} {:>3}%  {} of {}  ({}/s)",
                self.what,
                pct,
                human_bytes(self.done),
                human_bytes(self.total),
                human_bytes(rate as u64)
            );
            if self.tty {
                eprint!("\r{line}   ");
                if pct >= 100 {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
        }
        Ok(n)
    }
}

fn progress<R>(inner: R, total: u64, what: &'static str) -> Progress<R> {
    Progress {
        inner,
        done: 0,
        total,
        what,
        last_shown: 0,
        started: Instant::now(),
        tty: std::io::stderr().is_terminal(),
    }
}

fn sha256_of(path: &Path, total: u64) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = progress(f, total, "checksum");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn show_images(images: &[Image]) -> Result<()> {
    let mut t = table(&["NAME", "SIZE", "SHA256", "UPLOADED"]);
    for i in images {
        t.add_row(vec![
            i.name.clone(),
            human_bytes(i.size_bytes),
            i.sha256[..16].to_string() + "…",
            time(i.uploaded_at),
        ]);
    }
    print_table(&t)
}

/// Runs a `cosmctl images` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: ImagesCmd) -> Result<()> {
    match cmd {
        ImagesCmd::Upload { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .context("the file has no name; pass --name")?,
            };
            if !cosm_wire::valid_image_name(&name) {
                anyhow::bail!("{name:?} is not a valid image name (letters, digits, '.', '_', '-'; not starting with '.'); pass --name");
            }
            let total = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let sha = sha256_of(&file, total)?;
            let f = std::fs::File::open(&file)?;
            let body = reqwest::blocking::Body::sized(progress(f, total, "upload  "), total);
            let reply = ctx
                .api
                .upload(&format!("/images/{name}"), &[("sha256", sha)], body)?;
            ctx.show(reply, |i: Image| {
                println!(
                    "uploaded {} ({}, sha256 {})",
                    i.name,
                    human_bytes(i.size_bytes),
                    i.sha256
                );
                Ok(())
            })
        }
        ImagesCmd::List => {
            let reply = ctx.api.get_all("/images", &[])?;
            ctx.show(reply, |images: Vec<Image>| show_images(&images))
        }
        ImagesCmd::Show { name } => {
            let reply = ctx.api.get(&format!("/images/{name}"), &[])?;
            ctx.show(reply, |i: Image| show_images(&[i]))
        }
        ImagesCmd::Rm { name } => {
            let reply = ctx.api.delete(&format!("/images/{name}"))?;
            ctx.done(reply, format!("image {name} deleted"))
        }
    }
}
