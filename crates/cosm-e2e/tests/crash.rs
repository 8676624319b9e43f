//! SIGKILL in the middle of a stream of API writes loses nothing that was acknowledged.

use cosm_e2e::{client, Appliance};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a writer was told had succeeded, per MAC: the state the machine must be in.
type Acked = Arc<Mutex<BTreeMap<String, &'static str>>>;

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_write() {
    let mut app = Appliance::start().unwrap();
    let url = app.url();
    let token = app.token();
    let acked: Acked = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let failures_after_kill = Arc::new(Mutex::new(0u32));

    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let (url, token, acked, killed, fails) = (
                url.clone(),
                token.clone(),
                acked.clone(),
                killed.clone(),
                failures_after_kill.clone(),
            );
            std::thread::spawn(move || {
                let http = client(&token);
                let deadline = Instant::now() + Duration::from_secs(30);
                for i in 0..5000u32 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let mac = format!("02:00:00:{w:02x}:{:02x}:{:02x}", i >> 8, i & 0xff);
                    // Each machine is created, then given a role: two writes whose order matters.
                    let created = http
                        .post(format!("{url}/api/v1/machines"))
                        .json(&serde_json::json!({"mac": mac}))
                        .send()
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    if created {
                        acked.lock().unwrap().insert(mac.clone(), "discovered");
                        let roled = http
                            .put(format!("{url}/api/v1/machines/{mac}/role"))
                            .json(&serde_json::json!({"role": "host"}))
                            .send()
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        if roled {
                            acked.lock().unwrap().insert(mac, "ready");
                            continue;
                        }
                    }
                    if killed.load(Ordering::SeqCst) {
                        *fails.lock().unwrap() += 1;
                        break;
                    }
                }
            })
        })
        .collect();

    // Let the stream run, then kill the appliance without warning.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 300 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.store(true, Ordering::SeqCst);
    app.kill9();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} writes were acknowledged before the kill",
        acked.len()
    );
    assert!(
        *failures_after_kill.lock().unwrap() > 0,
        "the kill did not interrupt the stream"
    );

    app.restart().unwrap();
    let http = client(&app.token());
    let machines = cosm_e2e::list_all(&http, &app.url(), "/api/v1/machines").unwrap();
    let stored: BTreeMap<String, String> = machines
        .iter()
        .map(|m| {
            (
                m["mac"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (mac, want) in &acked {
        match stored.get(mac) {
            Some(have) if have == want || (*want == "discovered" && have == "ready") => {}
            other => lost.push(format!("{mac}: acknowledged {want}, found {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost after SIGKILL:\n{}",
        lost.len(),
        lost.join("\n")
    );
    eprintln!(
        "{} machines acknowledged before SIGKILL, all {} found after restart",
        acked.len(),
        acked.len()
    );
}
