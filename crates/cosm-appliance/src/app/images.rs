//! The image repository (the seed design's IR module): installer kernels, initrds, ISOs.
//!
//! Files live in `<data_dir>/images/<name>`; their records (size, sha256, time) in the
//! store. An upload is written to `.upload-<random>` beside them while hashed, and only
//! when it is complete and its sha256 equals the one the client declared is the file
//! fsync'd, renamed into place and recorded. An interrupted or refused upload leaves no
//! file behind (and a crash mid-upload leaves only a `.upload-*` file, removed at the next
//! start). The HTTP layer feeds the body in; this module knows files, not requests.

use super::{AppError, Op, Store};
use crate::store::StoreError;
use cosm_wire::{valid_image_name, Image, Timestamp, IMAGE_CHUNK_BYTES};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Why an upload stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("name: {name:?} is not a valid image name (letters, digits, '.', '_', '-'; not starting with '.'; at most 128)")]
    BadName { name: String },
    #[error("sha256: declare the file's sha256 (query ?sha256= or header X-Checksum-Sha256)")]
    NoChecksum,
    #[error("sha256: {declared:?} is not 64 hex digits")]
    BadChecksum { declared: String },
    #[error("the upload is larger than images.max_upload_mib ({} MiB); nothing was stored", .limit >> 20)]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted after {received} bytes; nothing was stored")]
    Interrupted { received: u64 },
    #[error("sha256: the {size} bytes received hash to {actual}, not the declared {declared}; nothing was stored")]
    Mismatch {
        size: u64,
        actual: String,
        declared: String,
    },
    #[error("{what}; the appliance log has the details")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Where the image files are, and how large an upload may be.
#[derive(Debug, Clone)]
pub struct ImageRepo {
    pub dir: PathBuf,
    pub max_upload_bytes: u64,
}

impl ImageRepo {
    /// Creates the directory and removes upload leftovers of a crash.
    pub fn open(dir: PathBuf, max_upload_bytes: u64) -> std::io::Result<ImageRepo> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".upload-") {
                tracing::warn!(file = %entry.path().display(), "removing an interrupted upload");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageRepo {
            dir,
            max_upload_bytes,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts an upload of `name` whose sha256 the client declared.
    pub async fn begin(&self, name: &str, declared: Option<&str>) -> Result<Upload, UploadError> {
        check_name(name)?;
        let declared = declared
            .map(|s| s.trim().to_ascii_lowercase())
            .ok_or(UploadError::NoChecksum)?;
        if declared.len() != 64 || !declared.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(UploadError::BadChecksum { declared });
        }
        let tmp = self.dir.join(format!(
            ".upload-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|source| io_error(name, "cannot create the upload file", source))?;
        Ok(Upload {
            repo: self.clone(),
            name: name.to_string(),
            declared,
            tmp: Some(tmp),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            chunks: Chunks::default(),
        })
    }

    /// The file of a recorded image, for downloads.
    pub fn recorded(&self, store: &Store, name: &str) -> Result<PathBuf, AppError> {
        check_name(name)?;
        match store.image(name)? {
            Some(_) => Ok(self.path(name)),
            None => Err(not_found(name)),
        }
    }

    /// Deletes an image's record, then its file.
    pub async fn delete(&self, store: &Store, name: &str) -> Result<(), AppError> {
        check_name(name)?;
        match store.run(Op::DeleteImage(name.to_string())).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => return Err(not_found(name)),
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = tokio::fs::remove_file(self.path(name)).await {
            tracing::warn!(error = %e, image = %name, "image record deleted but its file could not be removed");
        }
        tracing::info!(image = %name, "image deleted");
        Ok(())
    }
}

pub fn check_name(name: &str) -> Result<(), UploadError> {
    if valid_image_name(name) {
        Ok(())
    } else {
        Err(UploadError::BadName {
            name: name.to_string(),
        })
    }
}

pub fn not_found(name: &str) -> AppError {
    AppError::NotFound {
        message: format!("no image named {name:?}"),
    }
}

fn io_error(name: &str, what: &'static str, source: std::io::Error) -> UploadError {
    tracing::error!(error = %source, image = %name, "{what}");
    UploadError::Io { what, source }
}

/// An upload in progress; dropped before [`Upload::finish`], it removes its file.
#[derive(Debug)]
pub struct Upload {
    repo: ImageRepo,
    name: String,
    declared: String,
    tmp: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
    chunks: Chunks,
}

/// sha256 of each [`IMAGE_CHUNK_BYTES`] of a stream, as it passes.
#[derive(Debug, Default)]
pub struct Chunks {
    current: Sha256,
    filled: u64,
    done: Vec<String>,
}

impl Chunks {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (IMAGE_CHUNK_BYTES - self.filled) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.update(now);
            self.filled += now.len() as u64;
            if self.filled == IMAGE_CHUNK_BYTES {
                self.done
                    .push(hex::encode(std::mem::take(&mut self.current).finalize()));
                self.filled = 0;
            }
            data = rest;
        }
    }

    /// The list, the last (shorter) chunk included.
    pub fn finish(mut self) -> Vec<String> {
        if self.filled > 0 {
            self.done.push(hex::encode(self.current.finalize()));
        }
        self.done
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Upload {
    /// Appends a chunk of the body.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.size += data.len() as u64;
        if self.size > self.repo.max_upload_bytes {
            return Err(UploadError::TooLarge {
                limit: self.repo.max_upload_bytes,
            });
        }
        self.hasher.update(data);
        self.chunks.update(data);
        let file = self.file.as_mut().expect("the file is open until finish");
        file.write_all(data)
            .await
            .map_err(|source| io_error(&self.name, "cannot write the upload", source))
    }

    /// The body broke off: nothing is stored.
    pub fn interrupted(self, error: &dyn std::fmt::Display) -> UploadError {
        tracing::warn!(error = %error, image = %self.name, received = self.size, "upload interrupted; nothing stored");
        UploadError::Interrupted {
            received: self.size,
        }
    }

    /// Checks the sha256, moves the file into place and records it.
    pub async fn finish(mut self, store: &Store) -> Result<Image, AppError> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let (name, size) = (self.name.clone(), self.size);
        if actual != self.declared {
            tracing::warn!(image = %name, declared = %self.declared, %actual, size, "upload refused: checksum mismatch");
            return Err(UploadError::Mismatch {
                size,
                actual,
                declared: self.declared.clone(),
            }
            .into());
        }
        let file = self.file.take().expect("the file is open until finish");
        file.sync_all()
            .await
            .map_err(|source| io_error(&name, "cannot sync the upload", source))?;
        drop(file);
        let tmp = self
            .tmp
            .clone()
            .expect("the upload file exists until finish");
        tokio::fs::rename(&tmp, self.repo.path(&name))
            .await
            .map_err(|source| io_error(&name, "cannot move the upload into place", source))?;
        self.tmp = None;
        if let Ok(dir) = tokio::fs::File::open(&self.repo.dir).await {
            let _ = dir.sync_all().await;
        }
        let image = Image {
            name: name.clone(),
            size_bytes: size,
            sha256: actual,
            uploaded_at: Timestamp::now(),
            chunks: std::mem::take(&mut self.chunks).finish(),
            os: None,
        };
        store.run(Op::PutImage(image.clone())).await?;
        tracing::info!(image = %name, size, sha256 = %image.sha256, "image stored");
        Ok(image)
    }
}

/// Whether a file exists for a recorded image (for boot decisions).
pub fn has_image(dir: &Path, name: &str) -> bool {
    valid_image_name(name) && dir.join(name).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_hashes_do_not_depend_on_how_the_stream_is_cut() {
        let data: Vec<u8> = (0..(2 * IMAGE_CHUNK_BYTES + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut whole = Chunks::default();
        whole.update(&data);
        let whole = whole.finish();
        let mut pieces = Chunks::default();
        for piece in data.chunks(65_521) {
            pieces.update(piece);
        }
        assert_eq!(whole, pieces.finish());
        assert_eq!(whole.len(), 3);
        let last = &data[2 * IMAGE_CHUNK_BYTES as usize..];
        assert_eq!(whole[2], hex::encode(Sha256::digest(last)));
        assert_eq!(
            whole[0],
            hex::encode(Sha256::digest(&data[..IMAGE_CHUNK_BYTES as usize]))
        );
        assert!(Chunks::default().finish().is_empty());
    }
}
