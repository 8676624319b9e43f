//! The image repository (the seed design's IR module): installer kernels, initrds, ISOs.
//!
//! Files live in `<data_dir>/images/<name>`; their records (size, sha256, time) in the
//! store. An upload streams the request body to `.upload-<random>` beside them while
//! hashing it, and only when the body is complete and its sha256 equals the one the
//! client declared is the file fsync'd, renamed into place and recorded. An interrupted or
//! refused upload leaves no file behind (and a crash mid-upload leaves only a
//! `.upload-*` file, removed at the next start).

use crate::api::{ApiError, AppState};
use crate::store::{Command, StoreError};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cosm_wire::{valid_image_name, Image, Timestamp};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::path::{Path as FsPath, PathBuf};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Where the image files are, and how large an upload may be.
#[derive(Debug, Clone)]
pub struct ImageDir {
    pub dir: PathBuf,
    pub max_upload_bytes: u64,
}

impl ImageDir {
    /// Creates the directory and removes upload leftovers of a crash.
    pub fn open(dir: PathBuf, max_upload_bytes: u64) -> std::io::Result<ImageDir> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".upload-") {
                tracing::warn!(file = %entry.path().display(), "removing an interrupted upload");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageDir {
            dir,
            max_upload_bytes,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn images(state: &AppState) -> Result<&ImageDir, ApiError> {
    state.images.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "images_off",
            "this appliance has no image repository",
        )
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_image_name(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("name: {name:?} is not a valid image name (letters, digits, '.', '_', '-'; not starting with '.'; at most 128)"),
        ))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no image named {name:?}"),
    )
}

/// Deletes the temporary file unless it was moved into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct UploadQuery {
    sha256: Option<String>,
}

/// Upload an image: the body is the file; its sha256 must be declared.
#[utoipa::path(put, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name"),
           ("sha256" = Option<String>, Query, description = "sha256 of the body, lowercase hex (or the X-Checksum-Sha256 header)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Image), (status = 400), (status = 413), (status = 422, description = "the body's sha256 differs from the declared one; nothing was stored")))]
pub(crate) async fn upload_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = images(&state)?;
    check_name(&name)?;
    let declared = q
        .sha256
        .or_else(|| {
            req.headers()
                .get("x-checksum-sha256")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .map(|s| s.trim().to_ascii_lowercase())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "sha256: declare the file's sha256 (query ?sha256= or header X-Checksum-Sha256)",
            )
        })?;
    if declared.len() != 64 || !declared.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("sha256: {declared:?} is not 64 hex digits"),
        ));
    }
    let tmp_path = repo.dir.join(format!(
        ".upload-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let mut guard = TempFile(Some(tmp_path.clone()));
    let internal = |what: &str, e: std::io::Error| {
        tracing::error!(error = %e, image = %name, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; the appliance log has the details"),
        )
    };
    let mut file = tokio::fs::File::create(&tmp_path)
        .await
        .map_err(|e| internal("cannot create the upload file", e))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(error = %e, image = %name, received = size, "upload interrupted; nothing stored");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "interrupted",
                format!("the upload was interrupted after {size} bytes; nothing was stored"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > repo.max_upload_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the upload is larger than images.max_upload_mib ({} MiB); nothing was stored",
                    repo.max_upload_bytes >> 20
                ),
            ));
        }
        hasher.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| internal("cannot write the upload", e))?;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != declared {
        tracing::warn!(image = %name, %declared, %actual, size, "upload refused: checksum mismatch");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
            format!("sha256: the {size} bytes received hash to {actual}, not the declared {declared}; nothing was stored"),
        ));
    }
    file.sync_all()
        .await
        .map_err(|e| internal("cannot sync the upload", e))?;
    drop(file);
    let final_path = repo.path(&name);
    tokio::fs::rename(&tmp_path, &final_path)
        .await
        .map_err(|e| internal("cannot move the upload into place", e))?;
    guard.0 = None;
    if let Ok(dir) = tokio::fs::File::open(&repo.dir).await {
        let _ = dir.sync_all().await;
    }
    let image = Image {
        name: name.clone(),
        size_bytes: size,
        sha256: actual,
        uploaded_at: Timestamp::now(),
    };
    state
        .store
        .apply(Command::PutImage(image.clone()))
        .await
        .map_err(ApiError::from)?;
    tracing::info!(image = %name, size, sha256 = %image.sha256, "image stored");
    Ok((StatusCode::CREATED, Json(image)).into_response())
}

/// Every image, by name.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", responses((status = 200, body = [Image])))]
pub(crate) async fn list_images(
    State(state): State<AppState>,
) -> Result<Json<Vec<Image>>, ApiError> {
    images(&state)?;
    Ok(Json(state.store.images().map_err(ApiError::from)?))
}

/// One image's record.
#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name")),
    responses((status = 200, body = Image), (status = 404)))]
pub(crate) async fn show_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    images(&state)?;
    check_name(&name)?;
    let image = state.store.image(&name).map_err(ApiError::from)?;
    image.map(Json).ok_or_else(|| not_found(&name))
}

/// Deletes an image's record, then its file.
#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name")),
    responses((status = 204), (status = 404)))]
pub(crate) async fn delete_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let repo = images(&state)?;
    check_name(&name)?;
    match state.store.apply(Command::DeleteImage(name.clone())).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => return Err(not_found(&name)),
        Err(e) => return Err(ApiError::from(e)),
    }
    if let Err(e) = tokio::fs::remove_file(repo.path(&name)).await {
        tracing::warn!(error = %e, image = %name, "image record deleted but its file could not be removed");
    }
    tracing::info!(image = %name, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a recorded image (Range and HEAD supported). Used by the API download and by
/// the open `/boot/images/<name>` path installers fetch from.
pub(crate) async fn serve_image(
    state: &AppState,
    name: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = images(state)?;
    check_name(name)?;
    if state.store.image(name).map_err(ApiError::from)?.is_none() {
        return Err(not_found(name));
    }
    let resp = ServeFile::new(repo.path(name))
        .oneshot(req)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, image = name, "cannot read an image");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot read the image",
            )
        })?;
    Ok(resp.map(Body::new))
}

/// Downloads an image (Range supported).
#[utoipa::path(get, path = "/api/v1/images/{name}/content", tag = "images",
    params(("name" = String, Path, description = "image name")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404)))]
pub(crate) async fn download_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    serve_image(&state, &name, req).await
}

/// The token-protected image routes (the caller adds authentication).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/images", get(list_images))
        .route(
            "/api/v1/images/{name}",
            get(show_image)
                .put(upload_image)
                .delete(delete_image)
                // Uploads are bounded by images.max_upload_mib instead.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/images/{name}/content",
            get(download_image).head(download_image),
        )
}

/// Whether a file exists for a recorded image (for boot decisions).
pub fn has_image(dir: &FsPath, name: &str) -> bool {
    valid_image_name(name) && dir.join(name).is_file()
}
