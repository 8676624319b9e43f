//! The image repository: installer kernels, initrds, ISOs and other install media.

use crate::{RoleName, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One file of the image repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Its name: letters, digits, `.`, `_`, `-`; not starting with `.`; at most 128.
    pub name: String,
    pub size_bytes: u64,
    /// sha256 of the content, lowercase hex, checked at upload.
    pub sha256: String,
    pub uploaded_at: Timestamp,
    /// sha256 of each [`crate::IMAGE_CHUNK_BYTES`] of the content, computed at upload: an
    /// installer checks every chunk before it writes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Set when a role image's manifest is attached (`PUT /api/v1/images/{name}/manifest`):
    /// the image installs machines of that role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsImage>,
}

/// What a role image is, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OsImage {
    pub role: RoleName,
    /// `debian-12`.
    pub release: String,
    /// Bytes of the raw disk image inside the compressed file.
    pub raw_size: u64,
    /// The kernel release inside (`6.1.0-56-amd64`).
    #[serde(default)]
    pub kernel: String,
    /// Every package in the image, with its version.
    pub packages: Vec<ImagePackage>,
}

/// One package of a role image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImagePackage {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub arch: String,
    /// sha256 of the .deb it was installed from.
    #[serde(default)]
    pub sha256: String,
}

/// Body of `PUT /api/v1/images/{name}/manifest`: the manifest `make os-image` writes beside
/// the image (`cosm-<role>-bookworm.manifest.json`). Its size and sha256 must be those of
/// the uploaded image. Keys it has beyond these are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageManifest {
    pub role: RoleName,
    pub release: String,
    /// Bytes of the compressed image file.
    pub size: u64,
    /// sha256 of the compressed image file.
    pub sha256: String,
    pub raw_size: u64,
    #[serde(default)]
    pub kernel: String,
    pub packages: Vec<ImagePackage>,
}

/// Whether `name` is a valid image name (also a safe file name).
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
