//! Every template × role × OS release, rendered for sample machines:
//! - equals its golden file in `tests/golden/` (run with `UPDATE_GOLDEN=1` to rewrite them
//!   after an intended template change, and review the diff);
//! - passes `ksvalidator` (pykickstart) for that release's syntax version;
//! - its `%post`/`%onerror` scripts pass `shellcheck`.

use cosm_kickstart::{scripts, Hypervisor, Machine, Release, Site, Templates, ROLES};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(name: &str, install: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/bin")
        .join(name);
    if venv.exists() {
        return venv;
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| panic!("{name} is not installed: {install} (`make deps` does)"))
}

fn site() -> Site {
    Site {
        appliance_url: "http://192.0.2.1:8080".into(),
        install_token: "cosm_0123456789abcdef0123456789abcdef01234567".into(),
        root_password_hash: Some("$6$cosmsalt$3lZ2s2J1pHk0ZzJv9fJ7sWcF1mQzK8h9yXrN0aT5bU6cV7dW8eX9fY0gZ1hA2iB3jC4kD5lE6mF7nG8oH9pI0q".into()),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq1Bw0Rz3cXv8Kq0vYf8vX9m2m4pL0yQ3T6J5k7s9Ab ops@example".into()],
        timezone: "Etc/UTC".into(),
        selinux: "enforcing".into(),
        firewall: true,
        repo_url: None,
        xen_repo_url: "http://192.0.2.1:8080/images/xen-el7/".into(),
    }
}

fn machines() -> [(&'static str, Machine); 2] {
    [
        (
            "static",
            Machine {
                mac: "52:54:00:12:34:56".into(),
                hostname: "node-0a".into(),
                ip: Some("192.0.2.110".into()),
                netmask: Some("255.255.255.0".into()),
                gateway: Some("192.0.2.1".into()),
                dns: Some("192.0.2.1".into()),
                disk: Some("sda".into()),
            },
        ),
        (
            "dhcp",
            Machine {
                mac: "52:54:00:12:34:57".into(),
                hostname: "node-0b".into(),
                ip: None,
                netmask: None,
                gateway: None,
                dns: None,
                disk: None,
            },
        ),
    ]
}

#[test]
fn every_role_and_release_renders_validates_and_matches_its_golden_file() {
    let ksvalidator = tool("ksvalidator", "pip install pykickstart");
    let shellcheck = tool("shellcheck", "apt-get install shellcheck");
    let templates = Templates::new(None).unwrap();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let work = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for role in ROLES {
        for release in Release::ALL {
            for (kind, machine) in machines() {
                cases.push((role, release, Hypervisor::Kvm, kind, machine));
            }
        }
    }
    for (kind, machine) in machines() {
        cases.push(("host", Release::Centos7, Hypervisor::Xen, kind, machine));
    }
    let mut failures = Vec::new();
    for (role, release, hv, kind, machine) in &cases {
        let ks = templates
            .render(role, *release, *hv, machine, &site())
            .unwrap_or_else(|e| panic!("{role} {}: {e}", release.id()));
        let xen = if *hv == Hypervisor::Xen { "-xen" } else { "" };
        let name = format!("{role}-{}{xen}-{kind}.ks", release.id());
        let golden = golden_dir.join(&name);
        if update {
            std::fs::write(&golden, &ks).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
                panic!(
                    "{} is missing: run UPDATE_GOLDEN=1 cargo test -p cosm-kickstart",
                    golden.display()
                )
            });
            if want != ks {
                failures.push(format!("{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites it; review the diff)"));
            }
        }
        let file = work.path().join(&name);
        std::fs::write(&file, &ks).unwrap();
        let out = Command::new(&ksvalidator)
            .args(["-e", "-v", release.ksvalidator_version()])
            .arg(&file)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "ksvalidator -v {} {name}: {}{}",
                release.ksvalidator_version(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let scripts = scripts(&ks);
        assert_eq!(scripts.len(), 2, "{name}: expected %post and %onerror");
        for (section, body) in scripts {
            let sh = work.path().join(format!("{name}{section}.sh"));
            std::fs::write(&sh, body).unwrap();
            let out = Command::new(&shellcheck)
                .args(["-s", "bash"])
                .arg(&sh)
                .output()
                .unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "shellcheck {name} {section}: {}",
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} kickstarts failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn role_specific_content_and_clear_errors() {
    let t = Templates::new(None).unwrap();
    let (_, m) = machines().into_iter().next().unwrap();
    let ks = t
        .render("storage", Release::Rocky9, Hypervisor::Kvm, &m, &site())
        .unwrap();
    assert!(
        ks.contains("\nnfs-utils\n") && ks.contains("\ntargetcli\n"),
        "{ks}"
    );
    assert!(ks.contains("--exclude-weakdeps") && ks.contains("@^minimal-environment"));
    assert!(
        ks.contains("cat >> /root/.ssh/authorized_keys <<'KEYS'\nssh-ed25519 "),
        "{ks}"
    );
    assert!(ks.contains("ignoredisk --only-use=sda") && ks.contains("autopart --type=lvm"));
    assert!(ks.contains("--ip=192.0.2.110 --netmask=255.255.255.0 --gateway=192.0.2.1"));
    let kvm = t
        .render("host", Release::Alma8, Hypervisor::Kvm, &m, &site())
        .unwrap();
    assert!(
        kvm.contains("\nqemu-kvm\n") && kvm.contains("\nlibvirt\n") && !kvm.contains("\nxen\n")
    );
    let xen = t
        .render("host", Release::Centos7, Hypervisor::Xen, &m, &site())
        .unwrap();
    assert!(
        xen.contains("\nxen\n") && xen.contains("repo --name=cosm-xen"),
        "{xen}"
    );
    assert!(
        xen.contains("%packages --excludedocs\n@core --nodefaults"),
        "{xen}"
    );
    let err = t
        .render("host", Release::Rocky9, Hypervisor::Xen, &m, &site())
        .unwrap_err();
    assert!(err.to_string().contains("ships no Xen"), "{err}");
    let err = t
        .render("mail", Release::Rocky9, Hypervisor::Kvm, &m, &site())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no kickstart template for role \"mail\""),
        "{err}"
    );
    let mut bad = m.clone();
    bad.hostname = "a\nreboot".into();
    assert!(t
        .render("web", Release::Rocky9, Hypervisor::Kvm, &bad, &site())
        .is_err());
}

#[test]
fn an_operator_template_overrides_the_builtin_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.ks.j2"),
        "{% extends \"base.ks.j2\" %}{% block role_packages %}\nnginx{% endblock %}",
    )
    .unwrap();
    let t = Templates::new(Some(dir.path())).unwrap();
    assert_eq!(t.overridden, vec!["web.ks.j2".to_string()]);
    let (_, m) = machines().into_iter().next().unwrap();
    let ks = t
        .render("web", Release::Rocky9, Hypervisor::Kvm, &m, &site())
        .unwrap();
    assert!(
        ks.contains("\nnginx\n") && !ks.contains("\nhttpd\n"),
        "{ks}"
    );
    // A broken override is reported with its name.
    std::fs::write(dir.path().join("center.ks.j2"), "{% if %}").unwrap();
    let err = Templates::new(Some(dir.path())).unwrap_err();
    assert!(err.to_string().contains("center.ks.j2"), "{err}");
}
