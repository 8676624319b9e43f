//! The image repository's routes: upload (streamed into `app::images`), list, show,
//! delete, and downloads with Range (also for installers under `/boot/images/`).

use super::auth::{allow, Access};
use super::error::ApiError;
use super::extract::{query_params, single_range_only};
use super::paging::{self, NextLink};
use super::AppState;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use cosm_wire::Image;
use http_body_util::BodyExt;
use std::collections::HashMap;
use tower::ServiceExt;
use tower_http::services::ServeFile;

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route("/api/v1/images", allow(Read, get(list_images)))
        .route(
            "/api/v1/images/{name}",
            allow(Read, get(show_image))
                .merge(allow(Admin, put(upload_image).delete(delete_image)))
                // Uploads are bounded by images.max_upload_mib instead.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/images/{name}/manifest",
            allow(Admin, put(set_manifest)),
        )
        .route(
            "/api/v1/images/{name}/content",
            allow(Read, get(download_image).head(download_image)),
        )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct UploadQuery {
    sha256: Option<String>,
}

/// Upload an image: the body is the file; its sha256 must be declared.
#[utoipa::path(put, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name"),
           ("sha256" = Option<String>, Query, description = "sha256 of the body, lowercase hex (or the X-Checksum-Sha256 header)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Image), (status = 400), (status = 413), (status = 422, description = "the body's sha256 differs from the declared one; nothing was stored")))]
pub(super) async fn upload_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let repo = state.app.images()?;
    let declared = q.sha256.or_else(|| {
        req.headers()
            .get("x-checksum-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let mut upload = repo.begin(&name, declared.as_deref()).await?;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Err(upload.interrupted(&e).into()),
        };
        if let Ok(data) = frame.into_data() {
            upload.write(&data).await?;
        }
    }
    let image = upload.finish(&state.app.store).await?;
    Ok((StatusCode::CREATED, Json(image)).into_response())
}

/// Attach a role image's manifest (`make os-image` writes it beside the image): the image
/// then installs machines of the manifest's role. Its size and sha256 must be the uploaded
/// file's.
#[utoipa::path(put, path = "/api/v1/images/{name}/manifest", tag = "images",
    params(("name" = String, Path, description = "image name")),
    request_body = cosm_wire::ImageManifest,
    responses((status = 200, body = Image), (status = 404), (status = 409, description = "the manifest describes another file"), (status = 422)))]
pub(super) async fn set_manifest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    super::extract::ApiJson(manifest): super::extract::ApiJson<cosm_wire::ImageManifest>,
) -> Result<Json<Image>, ApiError> {
    state.app.images()?;
    crate::app::images::check_name(&name)?;
    let op = crate::app::Op::SetImageManifest {
        name: name.clone(),
        manifest,
    };
    let crate::app::Outcome::Image(image) = state.app.store.run(op).await? else {
        unreachable!("SetImageManifest gives an image")
    };
    if let Some(os) = &image.os {
        tracing::info!(image = %name, role = %os.role, release = %os.release, packages = os.packages.len(), "role image manifest attached");
    }
    Ok(Json(*image))
}

/// Every image, by name, one page at a time (`Link` rel="next" while more follow).
#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    params(("limit" = Option<usize>, Query, description = "records per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Image], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more follow"))),
              (status = 400, body = cosm_wire::ErrorBody)))]
pub(super) async fn list_images(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    state.app.images()?;
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_name(&q)?;
    paging::answer(
        &state,
        NextLink::new("/api/v1/images", &q),
        move |store| store.images_page(after.as_deref(), limit),
        |is: &[Image]| is.last().map(|i| paging::name_cursor(&i.name)),
    )
    .await
}

/// One image's record.
#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name")),
    responses((status = 200, body = Image), (status = 404)))]
pub(super) async fn show_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    state.app.images()?;
    crate::app::images::check_name(&name)?;
    let image = state.app.store.image(&name)?;
    image
        .map(Json)
        .ok_or_else(|| crate::app::images::not_found(&name).into())
}

/// Deletes an image's record, then its file.
#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "image name")),
    responses((status = 204), (status = 404)))]
pub(super) async fn delete_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let repo = state.app.images()?;
    repo.delete(&state.app.store, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a recorded image (Range and HEAD supported). Used by the API download and by
/// the open `/boot/images/<name>` path installers fetch from.
pub(super) async fn serve_image(
    state: &AppState,
    name: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let path = state.app.images()?.recorded(&state.app.store, name)?;
    let (mut parts, body) = req.into_parts();
    single_range_only(&mut parts.headers);
    let req = Request::from_parts(parts, body);
    let resp = ServeFile::new(path).oneshot(req).await.map_err(|e| {
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
pub(super) async fn download_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    serve_image(&state, &name, req).await
}
