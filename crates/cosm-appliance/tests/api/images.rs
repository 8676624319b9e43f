//! The image repository: checksums, no half files, ranges.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::json;

#[tokio::test]
async fn image_repository_checks_checksums_keeps_no_half_files_and_serves_ranges() {
    let app = TestApp::new().await;
    let data: Vec<u8> = (0..32_000_000u32).map(|i| (i % 251) as u8).collect();
    let put = |uri: String, body: Body| {
        Request::builder()
            .method("PUT")
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .unwrap()
    };
    // A wrong checksum: 422, and nothing kept.
    let wrong = sha256_hex(b"something else");
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={wrong}"),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("nothing was stored"));
    assert!(image_files(&app).is_empty(), "{:?}", image_files(&app));
    let (_, v) = app.call("GET", "/api/v1/images", None).await;
    assert_eq!(v, json!([]));
    // No checksum declared: 400 naming it.
    let (s, _, body) = app
        .raw(put(
            "/api/v1/images/big.iso".into(),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("sha256"));
    // An upload interrupted after 1 MiB: an error, and no file (not even a temporary one).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(data[..1 << 20].to_vec()),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let stream = futures_util::stream::iter(chunks);
    let right = sha256_hex(&data);
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={right}"),
            Body::from_stream(stream),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("interrupted"));
    assert!(image_files(&app).is_empty(), "{:?}", image_files(&app));
    // The right checksum: stored, listed, downloadable whole and by range.
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={right}"),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let (_, v) = app.call("GET", "/api/v1/images/big.iso", None).await;
    assert_eq!(
        (v["size_bytes"].as_u64(), v["sha256"].as_str()),
        (Some(32_000_000), Some(right.as_str()))
    );
    assert_eq!(image_files(&app), vec!["big.iso".to_string()]);
    let get = |uri: &str, range: Option<&str>| {
        let mut r = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin));
        if let Some(range) = range {
            r = r.header(header::RANGE, range);
        }
        r.body(Body::empty()).unwrap()
    };
    let (s, _, body) = app.raw(get("/api/v1/images/big.iso/content", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body == data, "the download differs from the upload");
    let (s, h, body) = app
        .raw(get(
            "/api/v1/images/big.iso/content",
            Some("bytes=31999990-"),
        ))
        .await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, data[31_999_990..].to_vec());
    assert_eq!(h[header::CONTENT_RANGE], "bytes 31999990-31999999/32000000");
    // Installers fetch the same file without a token.
    let (s, _, body) = get_text(&app, "/boot/images/big.iso", &[("range", "bytes=0-3")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{body}");
    // Bad names are refused; reading needs a token; delete removes record and file.
    let (s, _, _) = app
        .raw(put(
            format!("/api/v1/images/.hidden?sha256={right}"),
            Body::empty(),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.call_as(None, "GET", "/api/v1/images", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.call("DELETE", "/api/v1/images/big.iso", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(image_files(&app).is_empty());
    let (s, _) = app.call("DELETE", "/api/v1/images/big.iso", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
