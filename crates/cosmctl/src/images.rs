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
        /// A role image's manifest (`make os-image` writes `cosm-<role>-<release>.manifest.json`
        /// beside the image): attached after the upload, it makes the image install the
        /// manifest's role (see `cosmctl roles set-install`).
        #[arg(long, value_name = "MANIFEST")]
        manifest: Option<PathBuf>,
    },
    /// Attach a role image's manifest to an uploaded image (its size and sha256 must match).
    Manifest {
        /// The image's name in the repository.
        name: String,
        /// The manifest file (JSON, from `make os-image`).
        manifest: PathBuf,
    },
    /// List the images: role images show their role and release.
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

/// A role image's manifest from `make os-image`.
fn read_manifest(path: &Path) -> Result<cosm_wire::ImageManifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a role image manifest (make os-image writes one beside each image)",
            path.display()
        )
    })
}

fn show_images(images: &[Image]) -> Result<()> {
    let mut t = table(&["NAME", "ROLE", "RELEASE", "SIZE", "SHA256", "UPLOADED"]);
    for i in images {
        let (role, release) = match &i.os {
            Some(os) => (os.role.to_string(), os.release.clone()),
            None => ("-".to_string(), "-".to_string()),
        };
        t.add_row(vec![
            i.name.clone(),
            role,
            release,
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
        ImagesCmd::Manifest { name, manifest } => {
            let manifest = read_manifest(&manifest)?;
            let reply = ctx
                .api
                .put(&format!("/images/{name}/manifest"), &manifest)?;
            ctx.show(reply, |i: Image| show_images(&[i]))
        }
        ImagesCmd::Upload {
            file,
            name,
            manifest,
        } => {
            // Read before the upload: a bad manifest is found before minutes of upload.
            let manifest = manifest.as_deref().map(read_manifest).transpose()?;
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
            let Some(manifest) = manifest.filter(|_| reply.status.is_success()) else {
                return ctx.show(reply, |i: Image| {
                    println!(
                        "uploaded {} ({}, sha256 {})",
                        i.name,
                        human_bytes(i.size_bytes),
                        i.sha256
                    );
                    Ok(())
                });
            };
            let reply = ctx
                .api
                .put(&format!("/images/{name}/manifest"), &manifest)?;
            ctx.show(reply, |i: Image| {
                let os = i.os.as_ref().context("the appliance kept no manifest")?;
                println!(
                    "uploaded {} ({}, sha256 {}): image for role {} ({}, {} packages)",
                    i.name,
                    human_bytes(i.size_bytes),
                    i.sha256,
                    os.role,
                    os.release,
                    os.packages.len()
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
