//! Lists one page at a time (issue 11, item 12): `limit` and `cursor` on every list, the
//! next page in a `Link` header, clear 400s for bad input, and `/healthz` answered while
//! hundreds of lists run.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cosm_appliance::app::Op;
use serde_json::{json, Value};
use std::time::Duration;

/// GET with the admin token: status, the `Link` rel="next" target, and the JSON body.
async fn page(app: &TestApp, path: &str) -> (StatusCode, Option<String>, Value) {
    let req = Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    let next = h.get(header::LINK).map(|v| {
        let v = v.to_str().unwrap();
        assert!(v.ends_with(">; rel=\"next\""), "{v}");
        v.trim_start_matches('<')
            .trim_end_matches(">; rel=\"next\"")
            .to_string()
    });
    (
        s,
        next,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Follows a list from `first` to its end; returns every page's records.
async fn pages(app: &TestApp, first: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut path = Some(first.to_string());
    while let Some(p) = path.take() {
        assert!(out.len() < 100, "more than 100 pages from {first}");
        let (s, next, v) = page(app, &p).await;
        assert_eq!(s, StatusCode::OK, "{p}: {v}");
        out.push(v.as_array().unwrap().clone());
        path = next;
    }
    out
}

fn field(pages: &[Vec<Value>], name: &str) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|v| match &v[name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn sizes(pages: &[Vec<Value>]) -> Vec<usize> {
    pages.iter().map(Vec::len).collect()
}

#[tokio::test]
async fn machines_come_in_pages_that_keep_the_filters() {
    let app = TestApp::new().await;
    let mut macs = Vec::new();
    for i in 0..7u8 {
        // Created out of MAC order; listed in MAC order.
        let mac = format!("52:54:00:00:01:{:02x}", (i * 5) % 7);
        let role = if i % 2 == 0 {
            json!("host")
        } else {
            json!(null)
        };
        let (s, v) = app
            .call(
                "POST",
                "/api/v1/machines",
                Some(json!({"mac": mac, "role": role})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        macs.push(mac);
    }
    macs.sort();

    // One page by default: no Link.
    let (s, next, v) = page(&app, "/api/v1/machines").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 7);
    assert_eq!(next, None);

    let got = pages(&app, "/api/v1/machines?limit=3").await;
    assert_eq!(sizes(&got), [3, 3, 1]);
    assert_eq!(field(&got, "mac"), macs);

    // Exactly a page's worth: the last full page says nothing follows.
    let got = pages(&app, "/api/v1/machines?limit=7").await;
    assert_eq!(sizes(&got), [7]);

    // The filter travels in the Link.
    let (_, next, v) = page(&app, "/api/v1/machines?role=host&limit=2").await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let next = next.expect("more hosts follow");
    assert!(
        next.contains("role=host") && next.contains("limit=2"),
        "{next}"
    );
    let got = pages(&app, "/api/v1/machines?role=host&limit=2").await;
    let hosts = field(&got, "mac");
    assert_eq!(hosts.len(), 4);
    assert!(got.iter().flatten().all(|m| m["role"] == "host"));
    let got = pages(&app, "/api/v1/machines?state=discovered&limit=1").await;
    assert_eq!(sizes(&got), [1, 1, 1]);
}

#[tokio::test]
async fn every_list_is_paged_in_its_order() {
    let app = TestApp::new().await;
    // Roles: the four built in, and two more, by name.
    for name in ["zeta", "alpha"] {
        let (s, v) = app
            .call("POST", "/api/v1/roles", Some(json!({"name": name})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let got = pages(&app, "/api/v1/roles?limit=4").await;
    assert_eq!(sizes(&got), [4, 2]);
    assert_eq!(
        field(&got, "name"),
        ["alpha", "center", "host", "storage", "web", "zeta"]
    );

    // Rules: in evaluation order (priority, then id), across pages.
    for p in [5, -1, 5, 0, 9] {
        let (s, v) = app
            .call(
                "POST",
                "/api/v1/rules",
                Some(json!({"role": "host", "priority": p, "match": {"min_cpus": 1}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (_, all) = app.call("GET", "/api/v1/rules", None).await;
    let got = pages(&app, "/api/v1/rules?limit=2").await;
    assert_eq!(sizes(&got), [2, 2, 1]);
    assert_eq!(field(&got, "priority"), ["-1", "0", "5", "5", "9"]);
    assert_eq!(Value::Array(got.concat()), all);
    // A deleted rule leaves the order.
    let first = all[0]["id"].as_u64().unwrap();
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/rules/{first}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let got = pages(&app, "/api/v1/rules?limit=2").await;
    assert_eq!(field(&got, "priority"), ["0", "5", "5", "9"]);

    // Tokens: by id; a revoked one leaves the list.
    let (_, before) = app.call("GET", "/api/v1/tokens", None).await;
    let mut ids: Vec<u64> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let first_page = ids.len();
    for i in 0..4 {
        let (s, v) = app
            .call(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": format!("t{i}"), "scope": "read"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["info"]["id"].as_u64().unwrap());
    }
    let got = pages(&app, "/api/v1/tokens?limit=3").await;
    assert_eq!(got.len(), (first_page + 4).div_ceil(3));
    assert_eq!(
        field(&got, "id"),
        ids.iter().map(u64::to_string).collect::<Vec<_>>()
    );
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{}", ids[2]), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let got = pages(&app, "/api/v1/tokens?limit=2").await;
    assert_eq!(field(&got, "id").len(), first_page + 3);
    assert!(!field(&got, "id").contains(&ids[2].to_string()));

    // Leases: by address; the filters travel in the Link.
    for (i, ip) in ["10.0.0.9", "10.0.0.1", "10.0.0.200", "10.0.0.30"]
        .iter()
        .enumerate()
    {
        let lease: cosm_wire::Lease = serde_json::from_value(json!({
            "ip": ip, "mac": format!("52:54:00:00:02:0{}", i % 2),
            "state": "bound", "starts_at": "2024-01-01T00:00:00Z",
            "expires_at": "2024-01-02T00:00:00Z"
        }))
        .unwrap();
        app.assembly
            .state
            .app
            .store
            .run(Op::PutLease(lease))
            .await
            .unwrap();
    }
    let got = pages(&app, "/api/v1/leases?limit=3").await;
    assert_eq!(sizes(&got), [3, 1]);
    assert_eq!(
        field(&got, "ip"),
        ["10.0.0.1", "10.0.0.9", "10.0.0.30", "10.0.0.200"]
    );
    let got = pages(&app, "/api/v1/leases?limit=1&mac=52:54:00:00:02:01").await;
    assert_eq!(field(&got, "ip"), ["10.0.0.1", "10.0.0.30"]);

    // Images: by name.
    for name in ["c.img", "a.img", "b.img"] {
        let data = name.as_bytes().to_vec();
        let req = Request::builder()
            .method("PUT")
            .uri(format!(
                "/api/v1/images/{name}?sha256={}",
                sha256_hex(&data)
            ))
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(data))
            .unwrap();
        let (s, _, b) = app.raw(req).await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    }
    let got = pages(&app, "/api/v1/images?limit=2").await;
    assert_eq!(sizes(&got), [2, 1]);
    assert_eq!(field(&got, "name"), ["a.img", "b.img", "c.img"]);
}

#[tokio::test]
async fn a_timeline_pages_back_in_time() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:03:01";
    let (s, _) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": mac})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for r in ["host", "web", "storage"] {
        let (s, v) = app
            .call(
                "PUT",
                &format!("/api/v1/machines/{mac}/role"),
                Some(json!({"role": r})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, all) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    let all = all.as_array().unwrap().clone();
    assert!(all.len() >= 5, "{all:?}");
    // Pages of 2, newest first; each page is oldest first inside.
    let got = pages(&app, &format!("/api/v1/machines/{mac}/events?limit=2")).await;
    let mut rebuilt: Vec<Value> = Vec::new();
    for p in got.iter().rev() {
        rebuilt.extend(p.iter().cloned());
    }
    assert_eq!(rebuilt, all);
    assert_eq!(got[0][..], all[all.len() - 2..]);
}

#[tokio::test]
async fn bad_limits_and_cursors_are_400s_that_name_them() {
    let app = TestApp::new().await;
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:04:01"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for list in [
        "/api/v1/machines",
        "/api/v1/roles",
        "/api/v1/rules",
        "/api/v1/tokens",
        "/api/v1/leases",
        "/api/v1/images",
        "/api/v1/machines/52:54:00:00:04:01/events",
    ] {
        let too_many = if list.ends_with("events") {
            "10001"
        } else {
            "1001"
        };
        for bad in ["0", too_many, "-1", "many", ""] {
            let (s, v) = app.call("GET", &format!("{list}?limit={bad}"), None).await;
            assert_error(s, &v, StatusCode::BAD_REQUEST, Some("limit"));
        }
        // Not hex, odd length, and the wrong size for this list's keys.
        for bad in ["zz", "abc", "", "00", "0011223344556677889900aabbccddeeff"] {
            let (s, v) = app.call("GET", &format!("{list}?cursor={bad}"), None).await;
            let names_it = list.ends_with("roles") || list.ends_with("images");
            if names_it && bad == "00" {
                // A name cursor holds any bytes that are UTF-8: it is only a place in the
                // order; a page after it is just shorter.
                assert_eq!(s, StatusCode::OK, "{list} {bad}: {v}");
                continue;
            }
            assert_error(s, &v, StatusCode::BAD_REQUEST, Some("cursor"));
            assert!(
                v["message"].as_str().unwrap().contains("cursor"),
                "{list}: {v}"
            );
        }
        let (s, v) = app.call("GET", &format!("{list}?curser=00"), None).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, Some("curser"));
    }
    // A name cursor that is not UTF-8.
    let (s, v) = app.call("GET", "/api/v1/roles?cursor=ff", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("cursor"));
}

/// Many lists at once (each a full page of 1,000 machines) do not keep `/healthz` or a
/// heartbeat waiting: the lists are read on a few blocking threads, not on the async
/// workers. A behaviour check with a generous bound, not a timing benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_heartbeats_answer_while_200_lists_run() {
    let app = TestApp::new().await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": "52:54:00:00:05:01", "inventory": {}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let credential = v["credential"].as_str().unwrap().to_string();

    let store = app.assembly.state.app.store.clone();
    let creates: Vec<_> = (0..4000u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let spec = cosm_wire::CreateMachine {
                    mac: cosm_wire::MacAddr::from_u64(0x5254_0001_0000 + i),
                    hostname: Some(format!("node-{i}")),
                    role: None,
                    reserved_ip: None,
                    inventory: None,
                };
                store.run(Op::CreateMachine(spec)).await.unwrap();
            })
        })
        .collect();
    for c in creates {
        c.await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lists: Vec<_> = (0..200)
        .map(|_| {
            let router = app.router.clone();
            let admin = app.admin.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                use tower::ServiceExt;
                // Bounded: at most 50 lists each, and stopped when the checks are done.
                for _ in 0..50 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let req = Request::builder()
                        .uri("/api/v1/machines?limit=1000")
                        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                        .body(Body::empty())
                        .unwrap();
                    let resp = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Let the lists start before asking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let health = tokio::spawn({
            let router = app.router.clone();
            async move {
                use tower::ServiceExt;
                let req = Request::builder()
                    .uri("/healthz")
                    .body(Body::empty())
                    .unwrap();
                router.oneshot(req).await.unwrap().status()
            }
        });
        let status = tokio::time::timeout(Duration::from_secs(10), health)
            .await
            .expect("/healthz answered within 10 s while 200 lists ran")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let beat = tokio::spawn({
            let router = app.router.clone();
            let credential = credential.clone();
            async move {
                use tower::ServiceExt;
                let req = Request::builder()
                    .method("POST")
                    .uri("/api/v1/agent/heartbeat")
                    .header(header::AUTHORIZATION, format!("Bearer {credential}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                router.oneshot(req).await.unwrap().status()
            }
        });
        let status = tokio::time::timeout(Duration::from_secs(10), beat)
            .await
            .expect("a heartbeat answered within 10 s while 200 lists ran")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let still_listing = lists.iter().filter(|l| !l.is_finished()).count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in lists {
        l.await.unwrap();
    }
    assert!(
        still_listing > 0,
        "the lists ended before the checks; the check proved nothing"
    );
}
