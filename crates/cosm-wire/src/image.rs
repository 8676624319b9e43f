//! The image repository: installer kernels, initrds, ISOs and other install media.

use crate::Timestamp;
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
