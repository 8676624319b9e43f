//! `cosmctl networks`, `ports` and `secgroups` as an operator uses them: the real cosmctl
//! binary against a real appliance process. What the tables say, what --json gives, that
//! `secgroups show` prints rules `secgroups set --rule` takes back, and the exit statuses of
//! refusals (2 before any request, 1 from the appliance).

use cosm_e2e::{ok_stdout, Appliance};
use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs cosmctl and expects it to fail with `code`; answers its stderr.
fn refused(app: &Appliance, args: &[&str], code: i32) -> String {
    let out = app.cosmctl(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "{args:?}");
    stderr(&out)
}

#[test]
fn cosmctl_networks_create_list_show_delete() {
    let app = Appliance::start().unwrap();

    let out = ok_stdout(&app.cosmctl(&[
        "networks",
        "create",
        "tenant-a",
        "--cidr",
        "198.51.100.0/24",
    ]));
    assert_eq!(
        out.trim(),
        "created network tenant-a: VNI 1, 198.51.100.0/24 with gateway 198.51.100.1, MTU 1450"
    );
    ok_stdout(&app.cosmctl(&[
        "networks",
        "create",
        "tenant-b",
        "--cidr",
        "10.20.0.0/16",
        "--vni",
        "4242",
        "--gateway",
        "10.20.0.254",
        "--mtu",
        "1400",
    ]));

    let rows: Vec<Vec<String>> = ok_stdout(&app.cosmctl(&["networks", "list"]))
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["NAME", "VNI", "CIDR", "GATEWAY", "MTU"],
            ["tenant-a", "1", "198.51.100.0/24", "198.51.100.1", "1450"],
            ["tenant-b", "4242", "10.20.0.0/16", "10.20.0.254", "1400"],
        ]
    );
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(
        &app.cosmctl(&["--json", "networks", "show", "tenant-b"]),
    ))
    .unwrap();
    assert_eq!(json["vni"], 4242);
    let show = ok_stdout(&app.cosmctl(&["networks", "show", "tenant-b"]));
    assert!(show.contains("cbr4242"), "{show}");

    // Usage errors exit 2 before any request; the appliance's refusals exit 1.
    let err = refused(
        &app,
        &["networks", "create", "x", "--cidr", "10.0.0.7/24"],
        2,
    );
    assert!(
        err.contains("--cidr") && err.contains("did you mean 10.0.0.0/24?"),
        "{err}"
    );
    let err = refused(
        &app,
        &[
            "networks",
            "create",
            "x",
            "--cidr",
            "10.0.0.0/24",
            "--gateway",
            "10.0.1.1",
        ],
        2,
    );
    assert!(err.starts_with("error: --gateway: "), "{err}");
    let err = refused(
        &app,
        &["networks", "create", "tenant-a", "--cidr", "10.9.0.0/24"],
        1,
    );
    assert!(err.contains("[HTTP 409"), "{err}");

    let out = ok_stdout(&app.cosmctl(&["networks", "delete", "tenant-b"]));
    assert_eq!(out.trim(), "deleted network tenant-b");
    let err = refused(&app, &["networks", "show", "tenant-b"], 1);
    assert!(err.contains("[HTTP 404 not_found]"), "{err}");
}

#[test]
fn cosmctl_secgroups_round_trip_their_rules() {
    let app = Appliance::start().unwrap();
    let rules = [
        "in:tcp:22:0.0.0.0/0",
        "in:tcp:8000-8080:group=web",
        "in:icmp::10.0.0.0/8",
        "out:any::0.0.0.0/0",
    ];
    ok_stdout(&app.cosmctl(&["secgroups", "set", "web", "--rule", "in:tcp:443:0.0.0.0/0"]));
    let mut args = vec!["secgroups", "set", "app"];
    for r in rules {
        args.extend(["--rule", r]);
    }
    let out = ok_stdout(&app.cosmctl(&args));
    assert!(
        out.starts_with("set security group app: 4 rules\n"),
        "{out}"
    );

    // `show` prints the rules as they were given, and they make the same group again.
    let shown = ok_stdout(&app.cosmctl(&["secgroups", "show", "app"]));
    assert_eq!(shown.lines().collect::<Vec<_>>(), rules);
    let mut again = vec!["secgroups", "set", "app-copy"];
    for l in shown.lines() {
        again.extend(["--rule", l]);
    }
    ok_stdout(&app.cosmctl(&again));
    assert_eq!(
        ok_stdout(&app.cosmctl(&["secgroups", "show", "app-copy"])),
        shown
    );

    // --json show writes what --from-file reads.
    let json = ok_stdout(&app.cosmctl(&["--json", "secgroups", "show", "app"]));
    let file = app.dir.path().join("app.json");
    std::fs::write(&file, json.replace("\"app\"", "\"app-2\"")).unwrap();
    ok_stdout(&app.cosmctl(&[
        "secgroups",
        "set",
        "app-2",
        "--from-file",
        file.to_str().unwrap(),
    ]));
    assert_eq!(
        ok_stdout(&app.cosmctl(&["secgroups", "show", "app-2"])),
        shown
    );

    let list = ok_stdout(&app.cosmctl(&["secgroups", "list"]));
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("in:tcp:8000-8080:group=web"), "{list}");

    // A bad rule is refused by cosmctl, naming it and the part; a rule the appliance
    // refuses is named by its place on the command line.
    let err = refused(
        &app,
        &["secgroups", "set", "x", "--rule", "in:icmp:8:0.0.0.0/0"],
        2,
    );
    assert!(
        err.contains("'in:icmp:8:0.0.0.0/0'") && err.contains("the ports \"8\""),
        "{err}"
    );
    let err = refused(
        &app,
        &[
            "secgroups",
            "set",
            "x",
            "--rule",
            "in:tcp:22:0.0.0.0/0",
            "--rule",
            "in:tcp:5432:group=nope",
        ],
        1,
    );
    assert!(
        err.contains("hint: rules[1] is rule 2, in:tcp:5432:group=nope"),
        "{err}"
    );
    // Nothing given at all would make a group that passes nothing: refused.
    refused(&app, &["secgroups", "set", "x"], 2);

    let err = refused(&app, &["secgroups", "delete", "web"], 1);
    assert!(err.contains("[HTTP 409"), "{err}");
    for g in ["app", "app-copy", "app-2", "web"] {
        ok_stdout(&app.cosmctl(&["secgroups", "delete", g]));
    }
    let out = app.cosmctl(&["secgroups", "list"]);
    assert!(ok_stdout(&out).is_empty());
    assert_eq!(stderr(&out).trim(), "no security groups");
}

#[test]
fn cosmctl_ports_create_list_regroup_and_delete() {
    let app = Appliance::start().unwrap();
    let host = "52:54:00:00:0e:01";
    app.api_send(
        "POST",
        "/api/v1/machines",
        &serde_json::json!({"mac": host, "role": "host"}),
    )
    .unwrap();
    ok_stdout(&app.cosmctl(&[
        "networks",
        "create",
        "tenant-a",
        "--cidr",
        "198.51.100.0/24",
    ]));
    ok_stdout(&app.cosmctl(&["secgroups", "set", "web", "--rule", "in:tcp:80:0.0.0.0/0"]));
    ok_stdout(&app.cosmctl(&[
        "ports",
        "create",
        "--network",
        "tenant-a",
        "--host",
        host,
        "--mac",
        "52:54:00:aa:00:01",
        "--ip",
        "198.51.100.7",
        "--group",
        "web",
    ]));
    // Without --ip, the lowest free address after the gateway.
    ok_stdout(&app.cosmctl(&[
        "ports",
        "create",
        "--network",
        "tenant-a",
        "--host",
        host,
        "--mac",
        "52:54:00:aa:00:02",
    ]));
    let list = ok_stdout(&app.cosmctl(&["ports", "list", "--network", "tenant-a"]));
    let row = |mac: &str| -> String {
        list.lines()
            .find(|l| l.starts_with(mac))
            .unwrap_or_else(|| panic!("no row for {mac}:\n{list}"))
            .to_string()
    };
    let first = row("52:54:00:aa:00:01");
    assert!(
        first.contains("198.51.100.7") && first.contains("cp525400aa0001") && first.contains("web"),
        "{list}"
    );
    assert!(row("52:54:00:aa:00:02").contains("198.51.100.2"), "{list}");
    // The same address again is the appliance's refusal (exit 1), naming it.
    let err = refused(
        &app,
        &[
            "ports",
            "create",
            "--network",
            "tenant-a",
            "--host",
            host,
            "--ip",
            "198.51.100.7",
        ],
        1,
    );
    assert!(err.contains("198.51.100.7"), "{err}");
    ok_stdout(&app.cosmctl(&["ports", "set-groups", "52:54:00:aa:00:01", "--no-groups"]));
    let shown = ok_stdout(&app.cosmctl(&["--json", "ports", "show", "52:54:00:aa:00:01"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["security_groups"], serde_json::json!([]), "{v}");
    // The network cannot go while it has ports; once they are gone it can.
    refused(&app, &["networks", "delete", "tenant-a"], 1);
    for mac in ["52:54:00:aa:00:01", "52:54:00:aa:00:02"] {
        ok_stdout(&app.cosmctl(&["ports", "delete", mac]));
    }
    ok_stdout(&app.cosmctl(&["networks", "delete", "tenant-a"]));
}
