//! The open boot endpoints: iPXE scripts by state, boot files with Range and HEAD.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::json;

#[tokio::test]
async fn ipxe_script_follows_the_machine_state() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:01";
    // Unknown: the agent ramdisk, with the enrolment token and the MAC on the kernel line.
    let (s, h, script) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{script}");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel.contains("http://192.0.2.1:8080/boot/vmlinuz?mac=52:54:00:00:be:01&step=kernel"),
        "{kernel}"
    );
    assert!(
        kernel.contains(" cosm.token=cosm_") && kernel.contains(" cosm.mac=52:54:00:00:be:01"),
        "{kernel}"
    );
    assert!(kernel.contains(" console=ttyS0"), "{kernel}");
    assert!(
        !kernel.contains("initrd="),
        "BIOS needs no initrd=: {kernel}"
    );
    // The token in the script is an enrol-only token.
    let token = kernel
        .split(" cosm.token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (st, _) = app
        .call_as(Some(token), "GET", "/api/v1/machines", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // iPXE sends the MAC URL-encoded.
    let (s, _, uefi) = get_text(
        &app,
        "/boot/ipxe?mac=52%3A54%3A00%3A00%3Abe%3A01&arch=uefi",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        uefi.lines()
            .any(|l| l.starts_with("kernel ") && l.contains(" initrd=initramfs.img ")),
        "{uefi}"
    );

    // Deployed: the local disk, by firmware.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    walk(&app, mac, &["deploying", "deployed"]).await;
    let (_, _, bios) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert!(
        bios.contains("sanboot --no-describe --drive 0x80") && !bios.contains("kernel "),
        "{bios}"
    );
    let (_, _, uefi) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=uefi"), &[]).await;
    assert!(
        uefi.contains("\nexit 1\n") && !uefi.contains("sanboot"),
        "{uefi}"
    );
    // Each script fetch is on the machine's timeline.
    let events = boot_events(&app, mac, 1).await;
    assert!(
        events.iter().any(|m| m.contains("→ local disk")),
        "{events:?}"
    );

    // Fenced: nothing to boot.
    walk(&app, mac, &["lost", "fenced"]).await;
    let (_, _, fenced) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert!(
        fenced.contains("poweroff") && !fenced.contains("kernel ") && !fenced.contains("sanboot"),
        "{fenced}"
    );

    // Bad input: a clear 400 naming the parameter.
    for (path, field) in [
        ("/boot/ipxe?arch=bios", "mac"),
        ("/boot/ipxe?mac=zz:54:00:00:be:01", "mac"),
        ("/boot/ipxe?mac=52:54:00:00:be:01&arch=sparc", "arch"),
    ] {
        let (s, _, body) = get_text(&app, path, &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
    }
}

#[tokio::test]
async fn boot_files_support_range_and_head_and_land_on_the_timeline() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:02";
    let (s, v) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": mac})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Range: bytes 16..=31 of 0..=255.
    let req = Request::builder()
        .uri(format!("/boot/vmlinuz?mac={mac}&step=kernel"))
        .header(header::RANGE, "bytes=16-31")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, (16..=31u8).collect::<Vec<u8>>());
    assert_eq!(h[header::CONTENT_RANGE], "bytes 16-31/256");
    // HEAD: the length, no body.
    let req = Request::builder()
        .method("HEAD")
        .uri("/boot/vmlinuz")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0));
    assert_eq!(h[header::CONTENT_LENGTH], "256");
    // Whole files, staged from the iPXE and ramdisk directories.
    let (s, _, text) = get_text(
        &app,
        &format!("/boot/initramfs.img?mac={mac}&step=initrd"),
        &[],
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (StatusCode::OK, "contents of initramfs.img")
    );
    let (s, _, text) = get_text(&app, "/boot/snponly.efi", &[]).await;
    assert_eq!(
        (s, text.as_str()),
        (StatusCode::OK, "contents of snponly.efi")
    );
    // Nothing outside the boot directory.
    for path in [
        "/boot/../cosm.redb",
        "/boot/%2e%2e/admin.token",
        "/boot/missing",
    ] {
        let (s, _, body) = get_text(&app, path, &[]).await;
        assert!(
            s == StatusCode::NOT_FOUND || s == StatusCode::BAD_REQUEST,
            "{path}: {s} {body}"
        );
        assert!(!body.contains("cosm_"), "{path} leaked a token");
    }
    // A script reports the step it gave up at.
    let (s, _, _) = get_text(
        &app,
        &format!("/boot/report?mac={mac}&step=initrd&arch=uefi"),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The ranged kernel read (a resumed download) is not a boot step of its own.
    let events = boot_events(&app, mac, 2).await;
    assert_eq!(
        events[0], "initrd initramfs.img fetched over HTTP",
        "{events:?}"
    );
    assert!(events[1].contains("the initrd step failed"), "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
}

/// Hardening (issue 11, items 10 and 15): a link out of the boot directory is refused as
/// TFTP refuses it; a request for several ranges gets the whole file (200), not 416.
#[tokio::test]
async fn boot_files_refuse_links_out_of_the_boot_dir_and_serve_several_ranges_whole() {
    let app = TestApp::new().await;
    let boot = app._dir.path().join("boot");
    let secret = app._dir.path().join("secret.txt");
    std::fs::write(&secret, "not for the provisioning network").unwrap();
    std::os::unix::fs::symlink(&secret, boot.join("escape")).unwrap();
    std::os::unix::fs::symlink("vmlinuz", boot.join("alias")).unwrap();
    let (s, _, body) = get_text(&app, "/boot/escape", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert!(!body.contains("not for the provisioning network"));
    // A link that stays inside the directory is still served.
    let (s, _, _) = get_text(&app, "/boot/alias", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let req = Request::get("/boot/vmlinuz")
        .header(header::RANGE, "bytes=0-9,20-29")
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = app.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, (0..=255u8).collect::<Vec<u8>>());
    // One range is still a 206.
    let req = Request::get("/boot/vmlinuz")
        .header(header::RANGE, "bytes=20-29")
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = app.raw(req).await;
    assert_eq!(
        (s, body),
        (StatusCode::PARTIAL_CONTENT, (20..=29u8).collect())
    );
}

/// Hardening (issue 11, item 9): a MAC with a multi-byte character is a 400 naming the
/// field, on the open boot script and on the API, never a panic (500).
#[tokio::test]
async fn a_mac_with_multibyte_characters_is_a_400_not_a_panic() {
    let app = TestApp::new().await;
    let mac = "a%C3%A9aaaaaaaaa"; // "aéaaaaaaaaa", twelve bytes
    let (s, _, body) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("mac"), "{body}");
    let (s, v) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("mac"));
}
