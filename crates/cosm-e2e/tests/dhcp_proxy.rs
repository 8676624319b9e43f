//! proxyDHCP beside an existing DHCP server: dnsmasq hands out addresses, COSM in proxy mode
//! hands out boot information, and a real PXE client (QEMU, SeaBIOS with the iPXE option
//! ROM) takes its address from dnsmasq and its boot file from COSM.
//!
//! Layout: namespace `rack` holds a bridge and the VM's tap; dnsmasq (192.0.2.2) and the
//! appliance (192.0.2.1) each sit in their own namespace on a veth into that bridge, as two
//! servers on one provisioning segment. The iPXE ROM identifies itself as iPXE, so COSM
//! gives it the URL of its per-machine script; a small HTTP listener on the appliance side
//! records the fetch (the appliance's own boot endpoints are not built yet).

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VM_MAC: &str = "52:54:00:12:34:56";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth from `ns` into the bridge in `rack`, with `addr` on the `ns` end.
fn plug(rack: &NetNs, ns: &NetNs, addr: &str) -> String {
    let (bridge_end, ns_end) = (format!("{}b", ns.name()), format!("{}e", ns.name()));
    ip(&[
        "-n",
        rack.name(),
        "link",
        "add",
        &bridge_end,
        "type",
        "veth",
        "peer",
        "name",
        &ns_end,
        "netns",
        ns.name(),
    ]);
    ip(&[
        "-n",
        rack.name(),
        "link",
        "set",
        &bridge_end,
        "master",
        "br0",
        "up",
    ]);
    ip(&["-n", ns.name(), "addr", "add", addr, "dev", &ns_end]);
    ip(&["-n", ns.name(), "link", "set", &ns_end, "up"]);
    ns_end
}

#[test]
fn pxe_client_gets_address_from_dnsmasq_and_boot_file_from_cosm_proxy() {
    require_root_tools(&["ip", "dnsmasq", "qemu-system-x86_64", "python3", "curl"]);
    assert!(
        std::path::Path::new("/usr/lib/ipxe/qemu/pxe-virtio.rom").exists(),
        "the iPXE option ROMs are missing: install the Debian package ipxe-qemu (`make deps` does)"
    );
    let rack = NetNs::new("pxr").unwrap();
    let dns = NetNs::new("pxd").unwrap();
    let cosm = NetNs::new("pxc").unwrap();
    ip(&["-n", rack.name(), "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", rack.name(), "link", "set", "br0", "up"]);
    ip(&["-n", rack.name(), "tuntap", "add", "tap0", "mode", "tap"]);
    ip(&[
        "-n",
        rack.name(),
        "link",
        "set",
        "tap0",
        "master",
        "br0",
        "up",
    ]);
    let dns_if = plug(&rack, &dns, "192.0.2.2/24");
    let cosm_if = plug(&rack, &cosm, "192.0.2.1/24");
    let dir = tempfile::tempdir().unwrap();

    // The site's DHCP server: addresses only, no boot information.
    let leases = dir.path().join("dnsmasq.leases");
    let mut d = dns.command("dnsmasq");
    d.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--log-dhcp",
    ])
    .arg(format!("--interface={dns_if}"))
    .arg("--dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,5m")
    .arg(format!("--dhcp-leasefile={}", leases.display()))
    .arg(format!(
        "--pid-file={}",
        dir.path().join("dnsmasq.pid").display()
    ))
    .arg(format!(
        "--log-facility={}",
        dir.path().join("dnsmasq.log").display()
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    dns.spawn(d).unwrap();

    // Records HTTP fetches where COSM's boot URLs point.
    let fetches = dir.path().join("fetches.log");
    let listener = dir.path().join("listener.py");
    std::fs::write(
        &listener,
        format!(
            r#"import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open({log:?}, "a") as f:
            f.write(self.client_address[0] + " " + self.path + "\n")
        self.send_response(404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("192.0.2.1", 8081), H).serve_forever()
"#,
            log = fetches.display().to_string()
        ),
    )
    .unwrap();
    let mut l = cosm.command("python3");
    l.arg(&listener).stdout(Stdio::null()).stderr(Stdio::null());
    cosm.spawn(l).unwrap();

    let app = Appliance::start_with(
        Some(cosm.name()),
        &format!(
            "[dhcp]\nmode = \"proxy\"\nserver_id = \"192.0.2.1\"\ninterface = \"{cosm_if}\"\n[dhcp.boot]\nhttp_base = \"http://192.0.2.1:8081\"\n"
        ),
    )
    .unwrap();

    // A BIOS machine with the iPXE option ROM, network boot first.
    let mut vm = rack.command("qemu-system-x86_64");
    vm.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-boot",
        "n",
    ])
    .arg("-serial")
    .arg(format!("file:{}", dir.path().join("serial.log").display()))
    .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
    .arg("-device")
    .arg(format!("virtio-net-pci,netdev=n0,mac={VM_MAC}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let vm_pid = rack.spawn(vm).unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let fetched = loop {
        let text = std::fs::read_to_string(&fetches).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("/boot/ipxe")) {
            break line.to_string();
        }
        if Instant::now() > deadline {
            let dlog = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
            panic!("the VM never fetched its boot script from COSM's proxy answer within 120 s\ndnsmasq log:\n{dlog}\nappliance log:\n{}", app.log_text());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = rack.kill(vm_pid);

    // The address came from dnsmasq ...
    let lease_text = std::fs::read_to_string(&leases).unwrap();
    let lease = lease_text
        .lines()
        .find(|l| l.contains(VM_MAC))
        .unwrap_or_else(|| panic!("dnsmasq has no lease for {VM_MAC}:\n{lease_text}"));
    let vm_ip = lease.split_whitespace().nth(2).unwrap().to_string();
    assert!(vm_ip.starts_with("192.0.2.1"), "{lease}");
    // ... the boot file (iPXE's script URL for this MAC) from COSM, fetched from that address ...
    let (from, path) = fetched.split_once(' ').unwrap();
    assert_eq!(
        from, vm_ip,
        "the script was fetched from another address: {fetched}"
    );
    let path = path.replace("%3A", ":").replace("%3a", ":");
    assert_eq!(path, format!("/boot/ipxe?mac={VM_MAC}&arch=bios"));
    // ... and COSM, a proxy, never handed out an address.
    assert_eq!(app.api("/api/v1/leases").unwrap(), serde_json::json!([]));
}
