use super::*;
use cosm_wire::{GroupMembers, HostNetwork, MacAddr};
use serde_json::json;

fn net(vni: u32) -> HostNetwork {
    HostNetwork {
        name: format!("n{vni}").parse().unwrap(),
        vni,
        cidr: "198.51.100.0/24".parse().unwrap(),
        mtu: 1450,
        peers: vec![],
    }
}

fn port(k: u8, vni: u32, rules: Option<Vec<SecRule>>) -> HostPort {
    let mac: MacAddr = format!("52:54:00:00:01:{k:02x}").parse().unwrap();
    HostPort {
        vni,
        device: cosm_wire::port_device(&mac),
        mac,
        ip: Ipv4Addr::new(198, 51, 100, k),
        secured: rules.is_some(),
        rules: rules.unwrap_or_default(),
    }
}

fn rule(
    direction: Direction,
    protocol: Protocol,
    ports: Option<(u16, u16)>,
    remote: &str,
) -> SecRule {
    SecRule {
        direction,
        protocol,
        ports,
        remote: match remote.parse() {
            Ok(cidr) => Remote::Cidr(cidr),
            Err(_) => Remote::Group(remote.parse().unwrap()),
        },
    }
}

fn desired(ports: usize) -> HostNetworks {
    let ssh = vec![rule(
        Direction::Ingress,
        Protocol::Tcp,
        Some((22, 22)),
        "0.0.0.0/0",
    )];
    HostNetworks {
        networks: vec![net(5), net(6)],
        ports: (0..ports)
            .map(|k| {
                port(
                    k as u8 + 2,
                    if k % 2 == 0 { 5 } else { 6 },
                    Some(ssh.clone()),
                )
            })
            .collect(),
        groups: vec![],
    }
}

/// The rules of `chain` in `t`, as JSON text (for `contains` checks).
fn chain_text(t: &TableSpec, chain: &str) -> Vec<String> {
    t.rules
        .iter()
        .filter(|r| r.chain == chain)
        .map(|r| serde_json::to_string(&r.expr).unwrap())
        .collect()
}

/// What `nft -j list table` prints for `t` once applied: handles added, comments kept.
fn listing(t: &TableSpec) -> Value {
    let mut objects = vec![
        json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
        json!({"table": {"family": t.family_name(), "name": TABLE, "handle": 3}}),
    ];
    for (h, c) in t.chains.iter().enumerate() {
        let mut v = serde_json::to_value(c).unwrap();
        v["handle"] = json!(h + 1);
        objects.push(json!({ "chain": v }));
    }
    for (h, r) in t.rules.iter().enumerate() {
        let mut v = serde_json::to_value(r).unwrap();
        v["handle"] = json!(h + 100);
        objects.push(json!({ "rule": v }));
    }
    json!({ "nftables": objects })
}

#[test]
fn an_empty_host_has_base_chains_and_the_conntrack_rule_only() {
    let [bridge, inet] = tables(&HostNetworks::default());
    assert_eq!(bridge.chains.len(), 2);
    assert!(bridge.rules.is_empty());
    assert_eq!(inet.chains.len(), 3);
    assert_eq!(inet.rules.len(), 1, "{:?}", inet.rules);
    let doc = serde_json::to_value(ruleset(&HostNetworks::default())).unwrap();
    let cmds: Vec<&str> = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_object().unwrap().keys().next().unwrap().as_str())
        .collect();
    // Each table: add (so delete cannot fail), delete, add, then its content.
    assert_eq!(&cmds[..3], ["add", "delete", "add"]);
}

#[test]
fn the_cost_per_port_is_constant_and_base_chains_do_not_grow() {
    let count = |n: usize| {
        let [b, i] = tables(&desired(n));
        (
            b.rules.len(),
            i.rules.len(),
            b.chains.len() + i.chains.len(),
        )
    };
    let (b10, i10, c10) = count(10);
    let (b11, i11, c11) = count(11);
    let (b50, i50, _) = count(50);
    // Bridge: 7 anti-spoofing rules per port; inet: one allow rule and a drop per direction.
    assert_eq!((b11 - b10, i11 - i10, c11 - c10), (7, 3, 3));
    assert_eq!((b50 - b10, i50 - i10), (7 * 40, 3 * 40));
    let [b, i] = tables(&desired(50));
    for t in [&b, &i] {
        for base in ["prerouting", "forward"] {
            assert!(chain_text(t, base).len() <= 3, "{base} grew with the ports");
        }
    }
    eprintln!(
        "50 secured ports on 2 networks: {} bridge rules, {} inet rules",
        b.rules.len(),
        i.rules.len()
    );
}

#[test]
fn anti_spoofing_pins_mac_arp_and_ip_and_drops_the_rest() {
    let d = HostNetworks {
        networks: vec![net(5)],
        ports: vec![port(2, 5, None)],
        groups: vec![],
    };
    let [bridge, inet] = tables(&d);
    let chain = chain_text(&bridge, "port_cp525400000102");
    assert_eq!(chain.len(), 7);
    assert!(
        chain[0].contains(r#""saddr"}},"right":"52:54:00:00:01:02","op":"!="#),
        "{}",
        chain[0]
    );
    assert!(chain[1].contains("saddr ether"));
    assert!(chain[2].contains("saddr ip") && chain[2].contains("0.0.0.0"));
    assert!(chain[4].contains("198.51.100.2"));
    assert_eq!(chain[6], r#"[{"drop":null}]"#);
    // Isolation: the port and the VXLAN device of network 5 form its set.
    let from = chain_text(&bridge, "from_net5");
    assert!(
        from[0].contains("cvx5") && from[0].contains("cp525400000102"),
        "{from:?}"
    );
    // An unsecured port has no security-group chain.
    assert!(inet
        .chains
        .iter()
        .all(|c| !c.name.contains("cp525400000102")));
}

#[test]
fn rules_match_protocols_ports_cidrs_and_group_members_of_the_same_network() {
    let rules = vec![
        rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some((8000, 8080)),
            "203.0.113.0/24",
        ),
        rule(
            Direction::Ingress,
            Protocol::Udp,
            Some((53, 53)),
            "203.0.113.7/32",
        ),
        rule(Direction::Ingress, Protocol::Icmp, None, "web"),
        rule(Direction::Ingress, Protocol::Any, None, "empty"),
        rule(Direction::Egress, Protocol::Any, None, "0.0.0.0/0"),
    ];
    let d = HostNetworks {
        networks: vec![net(5), net(6)],
        ports: vec![port(2, 5, Some(rules))],
        groups: vec![
            GroupMembers {
                name: "web".parse().unwrap(),
                members: vec![
                    (5, Ipv4Addr::new(198, 51, 100, 9)),
                    (6, Ipv4Addr::new(198, 51, 100, 10)),
                ],
            },
            GroupMembers {
                name: "empty".parse().unwrap(),
                members: vec![(6, Ipv4Addr::new(198, 51, 100, 11))],
            },
        ],
    };
    let [_, inet] = tables(&d);
    let ingress = chain_text(&inet, "ingress_cp525400000102");
    // tcp range, udp single port, icmp from the group, then the drop; the rule whose group
    // has no member on network 5 is left out.
    assert_eq!(ingress.len(), 4, "{ingress:#?}");
    assert!(ingress[0].contains(r#"{"range":[8000,8080]}"#) && ingress[0].contains(r#""len":24"#));
    assert!(ingress[1].contains(r#""right":"203.0.113.7""#) && ingress[1].contains("udp"));
    assert!(ingress[2].contains("198.51.100.9") && !ingress[2].contains("198.51.100.10"));
    assert!(ingress[2].contains("accept"));
    let egress = chain_text(&inet, "egress_cp525400000102");
    assert_eq!(egress, [r#"[{"return":null}]"#, r#"[{"drop":null}]"#]);
    // Zones per network; the port is found by bridge and address.
    let pre = chain_text(&inet, "prerouting");
    assert!(
        pre[0].contains(r#"["cbr5",5]"#) && pre[0].contains(r#"["cbr6",6]"#),
        "{pre:?}"
    );
    let fwd = chain_text(&inet, "forward");
    assert!(fwd[0].contains("established"));
    assert!(
        fwd[1].contains(r#"{"concat":["cbr5","198.51.100.2"]}"#),
        "{}",
        fwd[1]
    );
}

#[test]
fn conntrack_zones_are_vnis_up_to_16_bits_and_never_zero() {
    assert_eq!(ct_zone(1), 1);
    assert_eq!(ct_zone(65535), 65535);
    assert_eq!(ct_zone(65536), 1);
    assert_eq!(
        ct_zone(cosm_wire::MAX_VNI),
        ((cosm_wire::MAX_VNI - 1) % 65535 + 1) as u16
    );
    assert!((1..200_000).all(|v| ct_zone(v) != 0));
}

#[test]
fn drift_sees_missing_added_reordered_rules_and_changed_chains() {
    let [bridge, _] = tables(&desired(3));
    let listed = listing(&bridge);
    assert_eq!(drift(&bridge, Some(&listed)), None);
    assert_eq!(drift(&bridge, None).as_deref(), Some("table missing"));

    let edit = |f: &dyn Fn(&mut Vec<Value>)| {
        let mut l = listed.clone();
        f(l["nftables"].as_array_mut().unwrap());
        drift(&bridge, Some(&l))
    };
    let is_rule = |o: &Value| o.get("rule").is_some();
    assert_eq!(
        edit(&|o| {
            let i = o.iter().position(is_rule).unwrap();
            o.remove(i);
        })
        .as_deref(),
        Some("1 rule missing")
    );
    assert_eq!(
        edit(&|o| o.push(json!({"rule": {"family": "bridge", "table": "cosm", "chain": "forward", "handle": 999, "expr": [{"accept": null}]}})))
            .as_deref(),
        Some("1 rule not ours")
    );
    assert_eq!(
        edit(&|o| {
            let first = o
                .iter()
                .position(|v| v["rule"]["chain"] == "port_cp525400000102")
                .unwrap();
            o.swap(first, first + 1);
        })
        .as_deref(),
        Some("rules out of order")
    );
    assert_eq!(
        edit(&|o| {
            let c = o
                .iter_mut()
                .find(|v| v["chain"]["name"] == "forward")
                .unwrap();
            c["chain"]["policy"] = json!("drop");
        })
        .as_deref(),
        Some("1 chain changed")
    );
    assert_eq!(
        edit(&|o| o.push(json!({"set": {"family": "bridge", "table": "cosm", "name": "x"}})))
            .as_deref(),
        Some("1 object not ours")
    );
}

#[test]
fn rule_comments_are_stable_and_differ_per_chain() {
    let a = tables(&desired(2));
    let b = tables(&desired(2));
    assert_eq!(a, b);
    let comments: BTreeSet<_> = a[0].rules.iter().map(|r| r.comment.clone()).collect();
    // The `drop` closing each port chain has the same expression but another chain.
    assert_eq!(comments.len(), a[0].rules.len());
}

#[test]
fn vxlan_is_taken_only_from_the_peers_of_the_hosts_networks() {
    let net = |vni: u32, peer: [u8; 4]| cosm_wire::HostNetwork {
        name: format!("n{vni}").parse().unwrap(),
        vni,
        cidr: "198.51.100.0/24".parse().unwrap(),
        mtu: 1450,
        peers: vec![std::net::Ipv4Addr::from(peer)],
    };
    let d = HostNetworks {
        networks: vec![net(5, [192, 0, 2, 2]), net(6, [192, 0, 2, 3])],
        ports: vec![],
        groups: vec![],
    };
    let [_, inet] = tables(&d);
    let input: Vec<_> = inet.rules.iter().filter(|r| r.chain == "input").collect();
    assert_eq!(input.len(), 1, "{input:?}");
    let text = serde_json::to_string(&input[0].expr).unwrap();
    for want in ["4789", "192.0.2.2", "192.0.2.3", "!=", "drop"] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
}
