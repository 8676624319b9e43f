//! Tenant networks, ports and security groups through the API (issue 14), and what each
//! host's agent is told to make of them. The real agents on real hosts are
//! `cosm-e2e/tests/sdn.rs`.

use crate::common::{assert_error, TestApp};
use crate::vms::{create, desired, host, vm, Host};
use axum::http::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn networks_get_vnis_and_gateways_and_bad_ones_name_the_field() {
    let app = TestApp::new().await;
    let (s, a) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-a", "cidr": "10.20.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["vni"].as_u64(), a["gateway"].as_str(), a["mtu"].as_u64()),
        (Some(1), Some("10.20.0.1"), Some(1450))
    );
    // The next gets the next free VNI; the same subnet is fine in another tenant network.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-b", "cidr": "10.20.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["vni"], 2);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-a", "cidr": "10.30.0.0/24"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24", "vni": 2})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("vni"));
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.9/24"})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("cidr"));
    assert!(
        v["message"].as_str().unwrap().contains("10.30.0.0/24"),
        "{v}"
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24", "gateway": "10.31.0.1"})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("gateway"));
    let (s, v) = app.call("GET", "/api/v1/networks", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "nothing refused was recorded: {v}"
    );
    // Read may look, not create.
    let read = app.read_token().await;
    let (s, _) = app
        .call_as(
            Some(&read),
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "d", "cidr": "10.40.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call("DELETE", "/api/v1/networks/tenant-a", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.call("GET", "/api/v1/networks/tenant-a", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, None);
    // Its VNI is free again.
    let (_, c) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24"})),
        )
        .await;
    assert_eq!(c["vni"], 1, "{c}");
}

#[tokio::test]
async fn security_groups_check_rules_and_references() {
    let app = TestApp::new().await;
    let ssh = json!({"name": "ssh", "rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": [22, 22], "remote": {"cidr": "0.0.0.0/0"}}
    ]});
    let (s, v) = app
        .call("PUT", "/api/v1/secgroups/ssh", Some(ssh.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let web = json!({"name": "web", "rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": [80, 80], "remote": {"group": "ssh"}}
    ]});
    let (s, v) = app.call("PUT", "/api/v1/secgroups/web", Some(web)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call("PUT", "/api/v1/secgroups/bad", Some(json!({"name": "bad", "rules": [
            {"direction": "ingress", "protocol": "icmp", "ports": [1, 2], "remote": {"cidr": "10.0.0.0/8"}}
        ]})))
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("rules"));
    let (s, v) = app
        .call(
            "PUT",
            "/api/v1/secgroups/bad",
            Some(json!({"name": "bad", "rules": [
                {"direction": "egress", "protocol": "any", "remote": {"group": "nobody"}}
            ]})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("rules"));
    assert!(v["message"].as_str().unwrap().contains("nobody"), "{v}");
    let (s, v) = app.call("PUT", "/api/v1/secgroups/other", Some(ssh)).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("name"));
    // Named by web: not deleted.
    let (s, v) = app.call("DELETE", "/api/v1/secgroups/ssh", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, _) = app.call("DELETE", "/api/v1/secgroups/web", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.call("DELETE", "/api/v1/secgroups/ssh", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.call("GET", "/api/v1/secgroups", None).await;
    assert_eq!(v, json!([]));
}

/// A host's VM report with its VXLAN endpoint, the networks it has up and what its network
/// reconcile changed.
async fn report_net(app: &TestApp, h: &Host, vtep: Option<&str>, ready: Value, changes: Value) {
    let body = json!({
        "capacity": {"vcpus": 8, "memory_mib": 8192, "storage_bytes": 100u64 << 30,
                     "migration_uri": format!("qemu+tcp://{}/system", h.mac), "vtep": vtep},
        "domains": [],
        "network": {"changes": changes, "ready": ready},
    });
    let (s, v) = app
        .call_as(Some(&h.cred), "POST", "/api/v1/agent/vms", Some(body))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

fn on_net(name: &str, host: &Host, nic: Value) -> Value {
    json!({"name": name, "kind": "tcg", "vcpus": 1, "memory_mib": 256, "host": host.mac, "nics": [nic]})
}

#[tokio::test]
async fn ports_get_addresses_and_each_host_is_told_its_networks_peers_and_rules() {
    let app = TestApp::new().await;
    let (h1, h2, h3) = (
        host(&app, 1, 8192).await,
        host(&app, 2, 8192).await,
        host(&app, 3, 8192).await,
    );
    report_net(&app, &h1, Some("192.0.2.11"), json!([]), json!([])).await;
    report_net(&app, &h2, Some("192.0.2.12"), json!([]), json!([])).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-a", "cidr": "198.51.100.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ssh = json!({"name": "ssh", "rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": [22, 22], "remote": {"cidr": "0.0.0.0/0"}},
        {"direction": "ingress", "protocol": "icmp", "remote": {"group": "ssh"}}]});
    let (s, v) = app.call("PUT", "/api/v1/secgroups/ssh", Some(ssh)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Two VMs on two hosts: the lowest free addresses after the gateway, the network's
    // bridge and MTU on the NIC.
    let (s, v) = create(
        &app,
        on_net(
            "a1",
            &h1,
            json!({"network": "tenant-a", "security_groups": ["ssh"]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let nic = &vm(&app, "a1").await["nics"][0];
    assert_eq!(
        (
            nic["ip"].as_str(),
            nic["bridge"].as_str(),
            nic["mtu"].as_u64()
        ),
        (Some("198.51.100.2"), Some("cbr1"), Some(1450)),
        "{nic}"
    );
    let a1_mac = nic["mac"].as_str().unwrap().to_string();
    let (s, v) = create(&app, on_net("a2", &h2, json!({"network": "tenant-a"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(vm(&app, "a2").await["nics"][0]["ip"], "198.51.100.3");
    // A host without a VXLAN endpoint takes no VM on a tenant network.
    let (s, v) = create(&app, on_net("a3", &h3, json!({"network": "tenant-a"}))).await;
    assert!(s.is_client_error(), "{s} {v}");
    // A NIC names a bridge or a network, and a network that exists.
    let (s, v) = create(&app, on_net("a4", &h1, json!({"network": "nope"}))).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("network"));
    let (s, v) = create(
        &app,
        on_net("a4", &h1, json!({"bridge": "br0", "network": "tenant-a"})),
    )
    .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("nics"));
    let (s, v) = create(
        &app,
        on_net(
            "a4",
            &h1,
            json!({"network": "tenant-a", "ip": "198.51.100.3"}),
        ),
    )
    .await;
    assert_error(s, &v, StatusCode::CONFLICT, None);

    // h1 is told its network with h2 as the only peer, its port with the group's rules, and
    // the members of the group a rule names.
    let d1 = desired(&app, &h1).await;
    let nets = &d1["networks"];
    assert_eq!(nets["networks"][0]["vni"], 1, "{nets}");
    assert_eq!(
        nets["networks"][0]["peers"],
        json!(["192.0.2.12"]),
        "{nets}"
    );
    let port = &nets["ports"][0];
    assert_eq!(
        (
            port["device"].as_str().unwrap(),
            port["secured"].as_bool(),
            port["rules"].as_array().unwrap().len()
        ),
        (
            format!("cp{}", a1_mac.replace(':', "")).as_str(),
            Some(true),
            2
        ),
        "{port}"
    );
    assert_eq!(
        nets["groups"][0]["members"],
        json!([[1, "198.51.100.2"]]),
        "{nets}"
    );
    assert_eq!(
        desired(&app, &h2).await["networks"]["networks"][0]["peers"],
        json!(["192.0.2.11"])
    );
    // h3 carries nothing (but is told so).
    assert_eq!(desired(&app, &h3).await["networks"]["networks"], json!([]));

    // A host-owned port: a fixed address, refused twice and outside the subnet.
    let (s, p) = app
        .call(
            "POST",
            "/api/v1/ports",
            Some(json!({"network": "tenant-a", "host": h3.mac, "ip": "198.51.100.10"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["owner"]["host"], h3.mac.as_str());
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/ports",
            Some(json!({"network": "tenant-a", "host": h3.mac, "ip": "198.51.100.10"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/ports",
            Some(json!({"network": "tenant-a", "host": h3.mac, "ip": "203.0.113.5"})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("ip"));
    let (s, list) = app
        .call("GET", "/api/v1/ports?network=tenant-a", None)
        .await;
    assert_eq!(
        (s, list.as_array().unwrap().len()),
        (StatusCode::OK, 3),
        "{list}"
    );
    // h3 has no endpoint yet, so it is no one's peer; once it reports one it is.
    assert_eq!(
        desired(&app, &h1).await["networks"]["networks"][0]["peers"],
        json!(["192.0.2.12"])
    );
    report_net(
        &app,
        &h3,
        Some("192.0.2.13"),
        json!([1]),
        json!(["created bridge cbr1"]),
    )
    .await;
    assert_eq!(
        desired(&app, &h1).await["networks"]["networks"][0]["peers"],
        json!(["192.0.2.12", "192.0.2.13"])
    );
    // What the reconcile did is on the host's timeline.
    let (s, ev) = app
        .call("GET", &format!("/api/v1/machines/{}/events", h3.mac), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "network" && e["message"] == "created bridge cbr1"),
        "{ev}"
    );

    // In use: the network and the group cannot go, nor a VM's port alone.
    let (s, v) = app.call("DELETE", "/api/v1/networks/tenant-a", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    assert!(v["message"].as_str().unwrap().contains("VM a1"), "{v}");
    let (s, v) = app.call("DELETE", "/api/v1/secgroups/ssh", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, v) = app
        .call("DELETE", &format!("/api/v1/ports/{a1_mac}"), None)
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, None);

    // Changing a port's groups changes its host's desired generation and rules.
    let before = desired(&app, &h1).await["generation"].as_u64().unwrap();
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/ports/{a1_mac}/security-groups"),
            Some(json!({"security_groups": []})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let d1 = desired(&app, &h1).await;
    assert!(d1["generation"].as_u64().unwrap() > before);
    assert_eq!(d1["networks"]["ports"][0]["secured"], false);
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/ports/{a1_mac}/security-groups"),
            Some(json!({"security_groups": ["nope"]})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("security_groups"),
    );

    // The host-owned port can be deleted; its address is free again.
    let (s, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/ports/{}", p["mac"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, list) = app.call("GET", "/api/v1/ports", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}
