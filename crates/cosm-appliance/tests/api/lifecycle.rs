//! The lifecycle, as a property: no sequence of API calls reaches a forbidden state.

use super::common::*;
use axum::http::StatusCode;
use proptest::prelude::*;
use serde_json::{json, Value};

// --- The lifecycle, as a property: no sequence of API calls reaches a forbidden state. ---

/// The lifecycle of DESIGN.md, written out independently of the implementation.
fn spec_allows(from: &str, to: &str) -> bool {
    let allowed: &[&str] = match from {
        "discovered" => &["ready", "failed", "lost", "retired"],
        "ready" => &["discovered", "deploying", "lost", "retired"],
        "deploying" => &["deployed", "failed", "ready"],
        "deployed" => &["active", "failed", "lost", "ready", "retired"],
        "active" => &["lost", "failed", "ready", "retired"],
        "failed" => &["discovered", "ready", "retired"],
        "lost" => &[
            "discovered",
            "ready",
            "active",
            "deployed",
            "fenced",
            "retired",
        ],
        "fenced" => &["ready", "active", "retired"],
        "retired" => &["discovered"],
        _ => &[],
    };
    allowed.contains(&to)
}

const STATES: [&str; 9] = [
    "discovered",
    "ready",
    "deploying",
    "deployed",
    "active",
    "failed",
    "lost",
    "fenced",
    "retired",
];
const ROLES: [Option<&str>; 3] = [Some("host"), Some("storage"), None];

#[derive(Debug, Clone)]
enum Op {
    Create {
        m: usize,
        role: Option<&'static str>,
    },
    SetState {
        m: usize,
        to: &'static str,
    },
    SetRole {
        m: usize,
        role: Option<&'static str>,
    },
    PatchRole {
        m: usize,
        role: Option<&'static str>,
    },
    Delete {
        m: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0usize..3;
    prop_oneof![
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::Create { m, role }),
        (m.clone(), prop::sample::select(STATES.to_vec()))
            .prop_map(|(m, to)| Op::SetState { m, to }),
        (m.clone(), prop::sample::select(STATES.to_vec()))
            .prop_map(|(m, to)| Op::SetState { m, to }),
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::SetRole { m, role }),
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::PatchRole { m, role }),
        m.prop_map(|m| Op::Delete { m }),
    ]
}

async fn snapshot(app: &TestApp, mac: &str) -> Option<Value> {
    let (s, v) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    (s == StatusCode::OK).then_some(v)
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let app = TestApp::new().await;
    let macs = [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "52:54:00:00:00:03",
    ];
    for op in ops {
        let mac = match &op {
            Op::Create { m, .. }
            | Op::SetState { m, .. }
            | Op::SetRole { m, .. }
            | Op::PatchRole { m, .. }
            | Op::Delete { m } => macs[*m],
        };
        let before = snapshot(&app, mac).await;
        let (status, body) = match &op {
            Op::Create { role, .. } => {
                app.call(
                    "POST",
                    "/api/v1/machines",
                    Some(json!({"mac": mac, "role": role})),
                )
                .await
            }
            Op::SetState { to, .. } => {
                app.call(
                    "POST",
                    &format!("/api/v1/machines/{mac}/state"),
                    Some(json!({"state": to})),
                )
                .await
            }
            Op::SetRole { role, .. } => {
                app.call(
                    "PUT",
                    &format!("/api/v1/machines/{mac}/role"),
                    Some(json!({"role": role})),
                )
                .await
            }
            Op::PatchRole { role, .. } => {
                app.call(
                    "PATCH",
                    &format!("/api/v1/machines/{mac}"),
                    Some(json!({"role": role})),
                )
                .await
            }
            Op::Delete { .. } => {
                app.call("DELETE", &format!("/api/v1/machines/{mac}"), None)
                    .await
            }
        };
        prop_assert!(status.as_u16() < 500, "{op:?} answered {status}: {body}");
        let after = snapshot(&app, mac).await;
        if !status.is_success() {
            prop_assert_eq!(
                &before,
                &after,
                "refused {:?} ({}) changed the machine",
                op,
                status
            );
            continue;
        }
        if let (Some(b), Some(a)) = (&before, &after) {
            let (from, to) = (b["state"].as_str().unwrap(), a["state"].as_str().unwrap());
            if from != to {
                prop_assert!(
                    spec_allows(from, to),
                    "{op:?} moved {mac} from {from} to {to}"
                );
                // Lost remembers where from, and leaves only back there (or fenced/retired).
                if to == "lost" {
                    prop_assert_eq!(a["lost_from"].as_str(), Some(from));
                }
                if from == "lost" && to != "fenced" && to != "retired" {
                    prop_assert_eq!(
                        b["lost_from"].as_str(),
                        Some(to),
                        "left lost for another state"
                    );
                }
            }
        }
        if before.is_none() {
            if let Some(a) = &after {
                let st = a["state"].as_str().unwrap();
                prop_assert!(st == "discovered" || st == "ready", "created in state {st}");
            }
        }
        if let (Some(b), None) = (&before, &after) {
            let st = b["state"].as_str().unwrap();
            prop_assert!(
                ["discovered", "ready", "failed", "retired"].contains(&st),
                "deleted while {st}"
            );
        }
        if let Some(a) = &after {
            let st = a["state"].as_str().unwrap();
            let has_role = !a["role"].is_null();
            if ["ready", "deploying", "deployed", "active"].contains(&st) {
                prop_assert!(has_role, "{mac} is {st} without a role");
            }
            if st == "discovered" {
                prop_assert!(!has_role, "{mac} is discovered but has role {}", a["role"]);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn no_call_sequence_breaks_the_lifecycle(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops))?;
    }
}
