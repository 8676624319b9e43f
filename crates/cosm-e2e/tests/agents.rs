//! Agents against a real appliance: 500 simulated agents enrol and beat once a second and
//! none is marked lost; one that goes silent becomes `lost` and comes back when it beats.

use cosm_e2e::simagent::{FleetStats, SimAgent};
use cosm_e2e::Appliance;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENTS: u32 = 500;

async fn state_of(http: &reqwest::Client, app: &Appliance, mac: &str) -> String {
    let m: serde_json::Value = http
        .get(format!("{}/api/v1/machines/{mac}", app.url()))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    m["state"].as_str().unwrap_or_default().to_string()
}

/// GETs an API path with the admin token and parses the JSON answer.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    token: &str,
    url: String,
) -> T {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_agents_stay_live_and_a_silent_one_is_lost_then_back() {
    let app =
        Appliance::start_with(None, "[agents]\nheartbeat_secs = 1\nmissed_beats = 3\n").unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (base, token) = (app.url(), app.token());

    let mut agents = Vec::new();
    for chunk in (0..AGENTS).collect::<Vec<_>>().chunks(50) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|n| {
                let (http, base, token, n) = (http.clone(), base.clone(), token.clone(), *n);
                tokio::spawn(async move { SimAgent::enroll(&http, &base, &token, n).await })
            })
            .collect();
        for h in handles {
            agents.push(h.await.unwrap().expect("enrolment"));
        }
    }
    let stats = Arc::new(FleetStats::default());
    let stop_all = Arc::new(AtomicBool::new(false));
    let stop_one = Arc::new(AtomicBool::new(false));
    let silent = agents.pop().unwrap();
    let silent_mac = silent.mac.to_string();
    let mut tasks = Vec::new();
    for (i, a) in agents.into_iter().enumerate() {
        let offset = Duration::from_millis((i as u64 * 997) % 1000);
        tasks.push(tokio::spawn(a.run(
            Duration::from_secs(1),
            offset,
            stop_all.clone(),
            stats.clone(),
        )));
    }
    let silent_task = tokio::spawn(silent.run(
        Duration::from_secs(1),
        Duration::ZERO,
        stop_one.clone(),
        stats.clone(),
    ));

    // Eight intervals: more than twice the three missed beats that would make one lost.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let lost = cosm_e2e::list_all_async(&http, &token, &base, "/api/v1/machines?state=lost")
        .await
        .unwrap();
    assert!(
        lost.is_empty(),
        "{} beating agents were marked lost",
        lost.len()
    );
    let all = cosm_e2e::list_all_async(&http, &token, &base, "/api/v1/machines")
        .await
        .unwrap();
    assert_eq!(all.len(), AGENTS as usize);
    assert!(all.iter().all(
        |m| m["state"] == "discovered" && m["inventory"]["cpu"]["threads"].as_u64() >= Some(2)
    ));
    let beats = stats.beats.load(Ordering::Relaxed);
    assert_eq!(
        stats.failures.load(Ordering::Relaxed),
        0,
        "failed heartbeats"
    );
    // Not one per second each: a busy machine may delay beats. What must hold is that
    // every agent beat often enough not to be lost (checked above), and that they beat
    // more than the four times each that three missed beats in 8 s would allow.
    assert!(
        beats >= u64::from(AGENTS) * 4,
        "only {beats} heartbeats in 8 s from {AGENTS} agents"
    );
    eprintln!(
        "{AGENTS} agents, {beats} heartbeats, mean answer {} µs, max {} µs",
        stats.latency_sum_us.load(Ordering::Relaxed) / beats.max(1),
        stats.latency_max_us.load(Ordering::Relaxed)
    );

    // One agent goes silent: lost after three missed beats (bounded wait), then back.
    stop_one.store(true, Ordering::Relaxed);
    silent_task.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while state_of(&http, &app, &silent_mac).await != "lost" {
        assert!(
            Instant::now() < deadline,
            "the silent agent was not marked lost within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let others_lost: Vec<serde_json::Value> =
        get_json(&http, &token, format!("{base}/api/v1/machines?state=lost")).await;
    assert_eq!(others_lost.len(), 1, "only the silent agent is lost");

    let n: u32 = AGENTS - 1;
    let again = SimAgent::enroll(&http, &base, &token, n).await.unwrap();
    again.beat(&stats).await.unwrap();
    assert_eq!(
        state_of(&http, &app, &silent_mac).await,
        "discovered",
        "back to the state it was lost from"
    );
    let events: serde_json::Value = get_json(
        &http,
        &token,
        format!("{base}/api/v1/machines/{silent_mac}/events"),
    )
    .await;
    let text = events.to_string();
    assert!(
        text.contains("no heartbeat for") && text.contains("heartbeats resumed"),
        "{text}"
    );

    stop_all.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// Simulated agents carry out queued actions through the agent's simulated controllers:
/// actions that take 4 s (three missed beats' worth) are reported done while every agent
/// keeps beating and none is marked lost; an unknown kind is reported unsupported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_carry_out_long_actions_and_stay_live() {
    const N: u32 = 20;
    const DELAY: Duration = Duration::from_secs(4);
    let app =
        Appliance::start_with(None, "[agents]\nheartbeat_secs = 1\nmissed_beats = 2\n").unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (base, token) = (app.url(), app.token());
    let stats = Arc::new(FleetStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for n in 0..N {
        let agent = SimAgent::enroll(&http, &base, &token, n)
            .await
            .unwrap()
            .with_action_delay(DELAY);
        let offset = Duration::from_millis(u64::from(n) * 47 % 1000);
        tasks.push(tokio::spawn(agent.run(
            Duration::from_secs(1),
            offset,
            stop.clone(),
            stats.clone(),
        )));
    }
    let mac = |n: u32| cosm_e2e::simagent::sim_mac(n).to_string();
    let queue = |n: u32, kind: &'static str| {
        let (http, base, token, mac) = (http.clone(), base.clone(), token.clone(), mac(n));
        async move {
            let r = http
                .post(format!("{base}/api/v1/machines/{mac}/actions"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "kind": kind }))
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "queue {kind} on {mac}: {}",
                r.status()
            );
        }
    };
    let queued = Instant::now();
    for n in 0..5 {
        queue(n, "reboot").await;
    }
    queue(5, "re-register").await;
    queue(6, "flash-bios").await;
    let events = |n: u32| {
        let (http, base, token, mac) = (http.clone(), base.clone(), token.clone(), mac(n));
        async move {
            http.get(format!("{base}/api/v1/machines/{mac}/events"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };

    let mut unsupported_after = None;
    loop {
        let lost: Vec<serde_json::Value> =
            get_json(&http, &token, format!("{base}/api/v1/machines?state=lost")).await;
        assert!(lost.is_empty(), "lost while acting: {lost:?}");
        if unsupported_after.is_none()
            && events(6)
                .await
                .contains("(flash-bios) unsupported by the agent")
        {
            unsupported_after = Some(queued.elapsed());
        }
        let mut done = 0;
        for n in 0..5 {
            done += u32::from(
                events(n)
                    .await
                    .contains("(reboot) done: dry run: would run reboot -f"),
            );
        }
        done += u32::from(
            events(5)
                .await
                .contains("(re-register) done: dry run: would enrol again"),
        );
        if done == 6 && unsupported_after.is_some() {
            break;
        }
        // Nothing is reported done before the controllers' delay has passed.
        assert!(
            done == 0 || queued.elapsed() >= DELAY,
            "{done} actions done after {:?}",
            queued.elapsed()
        );
        assert!(
            queued.elapsed() < Duration::from_secs(20),
            "only {done} of 6 actions reported done within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // "At once" by the appliance's own clock: from the event that queued flash-bios to the
    // one that reported it unsupported (this loop's polling would add its own delays).
    let timeline: Vec<cosm_wire::Event> = serde_json::from_str(&events(6).await).unwrap();
    let at = |what: &str| {
        timeline
            .iter()
            .find(|e| e.message.contains(what))
            .unwrap_or_else(|| panic!("no '{what}' on the timeline: {timeline:?}"))
            .at
            .as_millis()
    };
    let waited = at("(flash-bios) unsupported by the agent") - at("(flash-bios) queued");
    assert!(
        Duration::from_millis(waited) < DELAY,
        "the unknown kind waited {waited} ms (seen by this test after {unsupported_after:?})"
    );
    for n in 0..7 {
        let m: serde_json::Value =
            get_json(&http, &token, format!("{base}/api/v1/machines/{}", mac(n))).await;
        assert_eq!(m["pending_actions"], serde_json::Value::Null, "{m}");
    }
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}
