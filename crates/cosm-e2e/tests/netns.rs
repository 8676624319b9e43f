//! The network-namespace fixture itself: linked namespaces reach each other, commands are
//! bounded in time, and nothing is left behind after drop.

use cosm_e2e::netns::{require_root_tools, NetNs};
use std::process::Command;
use std::time::{Duration, Instant};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ping(ns: &NetNs, addr: &str) -> std::process::Output {
    let mut cmd = ns.command("ping");
    cmd.args(["-c1", "-W2", addr]);
    ns.run(cmd).expect("ping runs")
}

#[test]
fn linked_namespaces_ping_each_other_and_are_gone_after_drop() {
    require_root_tools(&["ip", "ping", "sysctl", "sleep", "sh"]);
    let a = NetNs::new("cosmta").unwrap();
    let b = NetNs::new("cosmtb").unwrap();
    assert!(
        a.name().len() <= 12 && a.name().starts_with("cosm"),
        "{}",
        a.name()
    );
    assert_ne!(a.name(), b.name());
    NetNs::link_pair(&a, "198.51.100.1/24", &b, "198.51.100.2/24").unwrap();
    assert_eq!(a.interfaces(), vec![format!("{}-0", a.name())]);
    assert!(a.interfaces()[0].len() <= 15);

    for (ns, peer) in [
        (&a, "198.51.100.2"),
        (&b, "198.51.100.1"),
        (&a, "127.0.0.1"),
    ] {
        let out = ping(ns, peer);
        assert!(
            out.status.success(),
            "ping {peer} from {} failed:\n{}{}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cat = a.command("cat");
    cat.arg("/proc/sys/net/ipv6/conf/all/disable_ipv6");
    assert_eq!(a.run_ok(cat).unwrap().trim(), "1", "IPv6 is disabled");

    // A process we keep, and one that escaped us (a forking daemon): both must die on drop.
    let mut sleeper = a.command("sleep");
    sleeper.arg("600");
    let kept = a.spawn(sleeper).unwrap();
    let mut daemon = b.command("sh");
    daemon.args(["-c", "sleep 600 >/dev/null 2>&1 </dev/null & echo $!"]);
    let escaped: u32 = b.run_ok(daemon).unwrap().trim().parse().unwrap();
    assert_eq!(a.try_wait(kept).unwrap(), None, "the kept process runs");
    assert!(b.pids().unwrap().contains(&escaped));

    let names = [a.name().to_string(), b.name().to_string()];
    assert!(names.iter().all(|n| netns_list().contains(n.as_str())));
    drop(a);
    drop(b);
    let list = netns_list();
    for n in &names {
        assert!(
            !list.split_whitespace().any(|w| w == n),
            "{n} still exists:\n{list}"
        );
    }
    // The kept process was reaped; the escaped one is SIGKILLed (its parent, init, reaps it).
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in [kept, escaped] {
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "process {pid} survived the drop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn run_kills_a_command_that_overruns_and_names_it() {
    require_root_tools(&["ip", "sleep"]);
    let ns = NetNs::new("cosmtt").unwrap();
    let mut cmd = ns.command("sleep");
    cmd.arg("30");
    let start = Instant::now();
    let err = ns
        .run_timeout(cmd, Duration::from_millis(300))
        .expect_err("sleep 30 overruns 300 ms");
    assert!(start.elapsed() < Duration::from_secs(5));
    let msg = format!("{err:#}");
    assert!(
        msg.contains("sleep 30") && msg.contains("did not finish"),
        "{msg}"
    );

    let mut fail = ns.command("false");
    fail.arg("x");
    let err = ns.run_ok(fail).expect_err("false fails");
    assert!(format!("{err:#}").contains("false x"), "{err:#}");
}

#[test]
#[should_panic(expected = "make deps")]
fn a_missing_tool_names_its_package() {
    require_root_tools(&["ip", "no-such-tool-cosm"]);
}
