//! Site settings (issue 15): what the first-run wizard writes, how each value is checked,
//! and how the settings in the store combine with the TOML file into the settings the
//! appliance runs with. Checks are pure functions of the settings and what they are checked
//! against ([`Context`]), so they are unit-tested without a store.

use crate::config::Config;
use cosm_kickstart::Release;
use cosm_wire::{
    DhcpModeSetting, EffectiveSetting, FieldError, InterfaceInfo, NetworkSettings, OsSettings,
    RoleRequirements, SettingSource, Settings, SettingsStep,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What settings are checked against.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The appliance's interfaces (empty: not checked).
    pub interfaces: Vec<InterfaceInfo>,
    /// The roles the catalogue has.
    pub roles: Vec<String>,
    /// Relayed subnets from the TOML file (`a.b.c.d/len`), which the provisioning subnet
    /// must not overlap.
    pub other_subnets: Vec<String>,
}

/// An IPv4 subnet parsed from `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a subnet such as 192.0.2.0/24"))?;
        let ip: Ipv4Addr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let len: u8 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("prefix length /{len} is outside /8../30"))?;
        let c = Cidr {
            network: ip,
            prefix_len: len,
        };
        if u32::from(ip) & !c.mask() != 0 {
            let net = Ipv4Addr::from(u32::from(ip) & c.mask());
            return Err(format!(
                "{text} has host bits set: the subnet is {net}/{len}"
            ));
        }
        Ok(c)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// An address machines can hold: inside, not the network or broadcast address.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn err(out: &mut Vec<FieldError>, field: &str, message: String) {
    out.push(FieldError {
        field: field.to_string(),
        message,
    });
}

/// The provisioning network's checks (wizard step 1).
pub fn check_network(n: &NetworkSettings, ctx: &Context) -> Vec<FieldError> {
    let mut out = Vec::new();
    let e = &mut out;
    if !ctx.interfaces.is_empty() && !ctx.interfaces.iter().any(|i| i.name == n.interface) {
        let names: Vec<&str> = ctx.interfaces.iter().map(|i| i.name.as_str()).collect();
        err(
            e,
            "network.interface",
            format!(
                "this appliance has no interface {:?} (it has: {})",
                n.interface,
                names.join(", ")
            ),
        );
    }
    let subnet = match Cidr::parse(&n.subnet) {
        Ok(c) => c,
        Err(m) => {
            err(e, "network.subnet", m);
            return out;
        }
    };
    for other in &ctx.other_subnets {
        if let Ok(o) = Cidr::parse(other) {
            if o.overlaps(&subnet) {
                err(
                    e,
                    "network.subnet",
                    format!("{subnet} overlaps the relayed subnet {o} of the configuration file"),
                );
            }
        }
    }
    if !subnet.usable(n.appliance_ip) {
        err(
            e,
            "network.appliance_ip",
            format!(
                "the appliance's address {} is not a host address inside the subnet {subnet}",
                n.appliance_ip
            ),
        );
    } else if let Some(i) = ctx.interfaces.iter().find(|i| i.name == n.interface) {
        let mine = i
            .addresses
            .iter()
            .any(|a| a.split('/').next() == Some(&n.appliance_ip.to_string()));
        if !mine {
            err(
                e,
                "network.appliance_ip",
                format!(
                    "{} is not an address of {} (it has: {})",
                    n.appliance_ip,
                    i.name,
                    if i.addresses.is_empty() {
                        "no IPv4 address".to_string()
                    } else {
                        i.addresses.join(", ")
                    }
                ),
            );
        }
    }
    let mut pool_ok = true;
    for (field, ip, what) in [
        ("network.pool_start", n.pool_start, "pool start"),
        ("network.pool_end", n.pool_end, "pool end"),
    ] {
        if !subnet.usable(ip) {
            pool_ok = false;
            err(
                e,
                field,
                format!("{what} {ip} is outside the subnet {subnet} (or is its network or broadcast address)"),
            );
        }
    }
    if pool_ok {
        if u32::from(n.pool_start) > u32::from(n.pool_end) {
            err(
                e,
                "network.pool_end",
                format!(
                    "the pool ends ({}) before it starts ({})",
                    n.pool_end, n.pool_start
                ),
            );
        } else {
            let pool = u32::from(n.pool_start)..=u32::from(n.pool_end);
            if pool.contains(&u32::from(n.appliance_ip)) {
                err(
                    e,
                    "network.pool_start",
                    format!(
                        "the pool {}–{} contains the appliance's own address {}",
                        n.pool_start, n.pool_end, n.appliance_ip
                    ),
                );
            }
            if let Some(g) = n.gateway {
                if pool.contains(&u32::from(g)) {
                    err(
                        e,
                        "network.gateway",
                        format!(
                            "the gateway {g} is inside the pool {}–{}",
                            n.pool_start, n.pool_end
                        ),
                    );
                }
            }
        }
    }
    if let Some(g) = n.gateway {
        if !subnet.usable(g) {
            err(
                e,
                "network.gateway",
                format!("the gateway {g} is not a host address inside the subnet {subnet}"),
            );
        }
    }
    for (i, d) in n.dns.iter().enumerate() {
        if d.is_unspecified() || d.is_broadcast() || d.is_multicast() {
            err(
                e,
                &format!("network.dns[{i}]"),
                format!("{d} is not a DNS server address"),
            );
        }
    }
    out
}

/// The OS step's checks (wizard step 2).
pub fn check_os(o: &OsSettings) -> Vec<FieldError> {
    let mut out = Vec::new();
    let e = &mut out;
    if Release::parse(&o.release).is_none() {
        err(
            e,
            "os.release",
            format!(
                "{:?} is not one of {}",
                o.release,
                Release::ALL.map(|r| r.id()).join(", ")
            ),
        );
    }
    if let Some(url) = &o.mirror_url {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url.contains(char::is_whitespace)
            && !url.contains(['$', '#', '"', '\'']);
        if !ok {
            err(
                e,
                "os.mirror_url",
                format!("{url:?} is not an http:// or https:// URL (one line, no spaces)"),
            );
        }
    }
    if let Some(h) = &o.root_password_hash {
        let fields: Vec<&str> = h.split('$').collect();
        let ok = h.starts_with('$') && fields.len() >= 4 && !h.contains(char::is_whitespace);
        if !ok {
            err(
                e,
                "os.root_password_hash",
                "must be a crypt(3) hash such as $6$salt$… (make one with `openssl passwd -6`), not a password".into(),
            );
        }
    }
    for (i, key) in o.ssh_keys.iter().enumerate() {
        let mut words = key.split_whitespace();
        let kind = words.next().unwrap_or("");
        let body = words.next().unwrap_or("");
        let ok = !key.contains(['\n', '\r'])
            && (kind.starts_with("ssh-") || kind.starts_with("ecdsa-"))
            && body.len() >= 16;
        if !ok {
            err(
                e,
                &format!("os.ssh_keys[{i}]"),
                "must be one public key line such as `ssh-ed25519 AAAA… user@host`".into(),
            );
        }
    }
    let tz_ok = !o.timezone.is_empty()
        && o.timezone.len() <= 64
        && o.timezone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
        && !o.timezone.starts_with('/')
        && !o.timezone.contains("..");
    if !tz_ok {
        err(
            e,
            "os.timezone",
            format!(
                "{:?} is not a time zone name such as UTC or Europe/Berlin",
                o.timezone
            ),
        );
    }
    out
}

/// The roles step's checks (wizard step 3).
pub fn check_roles(roles: &BTreeMap<String, RoleRequirements>, ctx: &Context) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (name, r) in roles {
        let field = |f: &str| format!("roles.{name}.{f}");
        if !ctx.roles.is_empty() && !ctx.roles.contains(name) {
            err(
                &mut out,
                &format!("roles.{name}"),
                format!(
                    "there is no role {name:?} (roles: {})",
                    ctx.roles.join(", ")
                ),
            );
        }
        for (f, v, max) in [
            ("min_cpus", u64::from(r.min_cpus), 4096),
            ("min_memory_mib", r.min_memory_mib, 64 << 20),
            ("min_disks", u64::from(r.min_disks), 256),
            ("min_disk_gib", r.min_disk_gib, 1 << 20),
        ] {
            if v > max {
                err(&mut out, &field(f), format!("{v} is more than {max}"));
            }
        }
    }
    out
}

/// The checks of one wizard step (or all of them).
pub fn check(step: SettingsStep, s: &Settings, ctx: &Context) -> Vec<FieldError> {
    let mut out = Vec::new();
    let net = |out: &mut Vec<FieldError>| {
        if let Some(n) = &s.network {
            out.extend(check_network(n, ctx))
        }
    };
    match step {
        SettingsStep::Network => {
            if s.network.is_none() {
                err(
                    &mut out,
                    "network",
                    "the provisioning network is missing".into(),
                );
            }
            net(&mut out)
        }
        SettingsStep::Os => out.extend(check_os(&s.os)),
        SettingsStep::Roles => out.extend(check_roles(&s.roles, ctx)),
        SettingsStep::All => {
            net(&mut out);
            out.extend(check_os(&s.os));
            out.extend(check_roles(&s.roles, ctx));
        }
    }
    out
}

/// What a machine fails of a role's requirements (empty: it meets them). A machine
/// without an inventory fails with that reason.
pub fn role_failures(inv: Option<&cosm_wire::Inventory>, r: &RoleRequirements) -> Vec<String> {
    let Some(inv) = inv else {
        return vec!["no inventory yet (its agent has not reported)".into()];
    };
    let mut out = Vec::new();
    let cpus = inv.cpu_count();
    if cpus < r.min_cpus {
        out.push(format!("{cpus} CPUs < {} required", r.min_cpus));
    }
    let mib = inv.memory_bytes >> 20;
    if mib < r.min_memory_mib {
        out.push(format!(
            "{mib} MiB memory < {} MiB required",
            r.min_memory_mib
        ));
    }
    let disks = inv.disks.len() as u32;
    if disks < r.min_disks {
        out.push(format!("{disks} disks < {} required", r.min_disks));
    }
    if r.min_disk_gib > 0 {
        let largest = inv.disks.iter().map(|d| d.size_bytes).max().unwrap_or(0) >> 30;
        if largest < r.min_disk_gib {
            out.push(format!(
                "largest disk {largest} GiB < {} GiB required",
                r.min_disk_gib
            ));
        }
    }
    out
}

/// The settings the TOML file (and built-in defaults) give, before any are stored.
pub fn from_config(c: &Config) -> Settings {
    let network = c.dhcp.as_ref().and_then(|d| {
        let core = &d.core;
        let sub = core.subnets.iter().find(|s| s.contains(core.server_id))?;
        let pool = sub.pools.first()?;
        Some(NetworkSettings {
            interface: d.listen.interface.clone().unwrap_or_default(),
            subnet: format!("{}/{}", sub.network, sub.prefix_len),
            appliance_ip: core.server_id,
            pool_start: pool.first,
            pool_end: pool.last,
            gateway: sub.routers.first().copied(),
            dns: sub.dns.clone(),
            mode: match core.mode {
                cosm_netboot::dhcp::Mode::Authoritative => DhcpModeSetting::Authoritative,
                cosm_netboot::dhcp::Mode::Proxy => DhcpModeSetting::Proxy,
                cosm_netboot::dhcp::Mode::Off => DhcpModeSetting::Off,
            },
        })
    });
    let k = &c.kickstart;
    Settings {
        network,
        os: OsSettings {
            release: k.release.id().to_string(),
            mirror_url: k.repo_url.clone(),
            root_password_hash: k.root_password_hash.clone(),
            ssh_keys: k.ssh_keys.clone(),
            timezone: k.timezone.clone(),
        },
        roles: default_requirements(),
    }
}

/// The DHCP configuration `base` (the file's) with the provisioning network of the site
/// settings: its subnet (the one holding the file's server address), pool, gateway, DNS,
/// the server address and the mode. Relayed subnets stay as the file has them.
pub fn dhcp_config(
    base: &cosm_netboot::dhcp::DhcpConfig,
    n: &NetworkSettings,
) -> cosm_netboot::dhcp::DhcpConfig {
    use cosm_netboot::dhcp::{Mode, Pool};
    let mut c = base.clone();
    let old_id = base.server_id;
    let cidr = Cidr::parse(&n.subnet).ok();
    let at = c.subnets.iter().position(|s| s.contains(old_id));
    if let (Some(i), Some(cidr)) = (at, cidr) {
        let sub = &mut c.subnets[i];
        sub.network = cidr.network;
        sub.prefix_len = cidr.prefix_len;
        sub.pools = vec![Pool {
            first: n.pool_start,
            last: n.pool_end,
        }];
        sub.routers = n.gateway.into_iter().collect();
        sub.dns = n.dns.clone();
    }
    c.server_id = n.appliance_ip;
    if c.boot.tftp_server == old_id {
        c.boot.tftp_server = n.appliance_ip;
    }
    c.boot.http_base = c
        .boot
        .http_base
        .replace(&format!("//{old_id}:"), &format!("//{}:", n.appliance_ip));
    c.mode = match n.mode {
        DhcpModeSetting::Authoritative => Mode::Authoritative,
        DhcpModeSetting::Proxy => Mode::Proxy,
        DhcpModeSetting::Off => Mode::Off,
    };
    c
}

/// Built-in role requirements: what the kickstarts' partitioning and the roles' services
/// need at the least.
pub fn default_requirements() -> BTreeMap<String, RoleRequirements> {
    let r = |min_cpus, min_memory_mib, min_disk_gib| RoleRequirements {
        min_cpus,
        min_memory_mib,
        min_disks: 1,
        min_disk_gib,
    };
    BTreeMap::from([
        ("center".to_string(), r(2, 2048, 20)),
        ("web".to_string(), r(1, 1024, 10)),
        ("host".to_string(), r(2, 2048, 20)),
        ("storage".to_string(), r(1, 1024, 20)),
    ])
}

/// Every effective value with where it came from: `stored` (if any) over the file's.
pub fn effective(file: &Settings, stored: Option<&Settings>) -> Vec<EffectiveSetting> {
    let flat_file = flatten(file);
    let flat_store = stored.map(flatten).unwrap_or_default();
    let defaults = flatten(&Settings {
        network: None,
        os: file.os.clone(),
        roles: default_requirements(),
    });
    let mut keys: Vec<&String> = flat_file.keys().chain(flat_store.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let (value, source) = match (flat_store.get(k), flat_file.get(k)) {
                (Some(v), _) => (v.clone(), SettingSource::Store),
                (None, Some(v)) => {
                    let from_default = k.starts_with("roles.") && defaults.get(k) == Some(v);
                    (
                        v.clone(),
                        if from_default {
                            SettingSource::Default
                        } else {
                            SettingSource::File
                        },
                    )
                }
                (None, None) => unreachable!("a key from one of the two"),
            };
            EffectiveSetting {
                key: k.clone(),
                value,
                source,
            }
        })
        .collect()
}

/// `key → value` for every leaf of the settings, as strings.
fn flatten(s: &Settings) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            serde_json::Value::Null => {
                out.insert(prefix.to_string(), "(none)".into());
            }
            other => {
                let text = match other {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map_or(x.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => other.to_string(),
                };
                out.insert(prefix.to_string(), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    let v = serde_json::to_value(s).unwrap_or_default();
    walk("", &v, &mut out);
    // Secrets are shown as set or not, never echoed.
    if let Some(h) = out.get_mut("os.root_password_hash") {
        if h != "(none)" {
            *h = "(set)".into();
        }
    }
    out
}

/// The appliance's interfaces with their IPv4 addresses (loopback left out).
pub fn interfaces() -> Vec<InterfaceInfo> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    for a in addrs {
        if a.interface_name == "lo" {
            continue;
        }
        let entry = by_name.entry(a.interface_name.clone()).or_default();
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let (Some(ip), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) else {
            continue;
        };
        let len = u32::from(mask.ip()).count_ones();
        entry.push(format!("{}/{len}", ip.ip()));
    }
    by_name
        .into_iter()
        .map(|(name, addresses)| InterfaceInfo { name, addresses })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkSettings {
        NetworkSettings {
            interface: "eth0".into(),
            subnet: "192.0.2.0/24".into(),
            appliance_ip: "192.0.2.1".parse().unwrap(),
            pool_start: "192.0.2.100".parse().unwrap(),
            pool_end: "192.0.2.200".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            dns: vec!["192.0.2.1".parse().unwrap()],
            mode: DhcpModeSetting::Authoritative,
        }
    }

    fn ctx() -> Context {
        Context {
            interfaces: vec![InterfaceInfo {
                name: "eth0".into(),
                addresses: vec!["192.0.2.1/24".into()],
            }],
            roles: vec!["host".into(), "web".into()],
            other_subnets: vec!["198.51.100.0/24".into()],
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_sound_network_passes() {
        assert_eq!(check_network(&net(), &ctx()), vec![]);
    }

    #[test]
    fn a_pool_outside_the_subnet_is_refused_with_its_message() {
        let mut n = net();
        n.pool_start = "10.0.0.5".parse().unwrap();
        let e = check_network(&n, &ctx());
        assert_eq!(fields(&e), ["network.pool_start"]);
        assert!(
            e[0].message
                .contains("pool start 10.0.0.5 is outside the subnet 192.0.2.0/24"),
            "{e:?}"
        );
    }

    #[test]
    fn a_reversed_pool_and_a_pool_holding_the_appliance_are_refused() {
        let mut n = net();
        n.pool_start = "192.0.2.200".parse().unwrap();
        n.pool_end = "192.0.2.100".parse().unwrap();
        assert_eq!(fields(&check_network(&n, &ctx())), ["network.pool_end"]);
        let mut n = net();
        n.pool_start = "192.0.2.1".parse().unwrap();
        n.gateway = Some("192.0.2.254".parse().unwrap());
        let e = check_network(&n, &ctx());
        assert_eq!(fields(&e), ["network.pool_start"], "{e:?}");
        assert!(e[0].message.contains("appliance's own address"));
    }

    #[test]
    fn the_appliance_address_must_be_in_the_subnet_and_on_the_interface() {
        let mut n = net();
        n.appliance_ip = "203.0.113.1".parse().unwrap();
        let e = check_network(&n, &ctx());
        assert_eq!(fields(&e), ["network.appliance_ip"]);
        let mut n = net();
        n.appliance_ip = "192.0.2.2".parse().unwrap();
        let e = check_network(&n, &ctx());
        assert_eq!(fields(&e), ["network.appliance_ip"]);
        assert!(e[0].message.contains("not an address of eth0"), "{e:?}");
    }

    #[test]
    fn bad_subnets_overlaps_and_unknown_interfaces_are_refused() {
        for (subnet, says) in [
            ("192.0.2.0", "not a subnet"),
            ("192.0.2.1/24", "host bits set"),
            ("192.0.2.0/31", "outside /8../30"),
        ] {
            let mut n = net();
            n.subnet = subnet.into();
            let e = check_network(&n, &ctx());
            assert!(e[0].message.contains(says), "{subnet}: {e:?}");
        }
        let mut c = ctx();
        c.other_subnets = vec!["192.0.0.0/16".into()];
        let e = check_network(&net(), &c);
        assert!(
            e[0].message.contains("overlaps the relayed subnet"),
            "{e:?}"
        );
        let mut n = net();
        n.interface = "eth9".into();
        let e = check_network(&n, &ctx());
        assert_eq!(fields(&e), ["network.interface"]);
        assert!(e[0].message.contains("(it has: eth0)"), "{e:?}");
    }

    #[test]
    fn os_values_are_checked() {
        let good = OsSettings {
            release: "rocky-9".into(),
            mirror_url: Some("http://mirror.example/rocky/9/".into()),
            root_password_hash: Some("$6$salt$abcdefghijklmnop".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops@site".into()],
            timezone: "Europe/Berlin".into(),
        };
        assert_eq!(check_os(&good), vec![]);
        let bad = OsSettings {
            release: "windows-95".into(),
            mirror_url: Some("ftp://x".into()),
            root_password_hash: Some("hunter2".into()),
            ssh_keys: vec!["not a key".into()],
            timezone: "../../etc/passwd".into(),
        };
        assert_eq!(
            fields(&check_os(&bad)),
            [
                "os.release",
                "os.mirror_url",
                "os.root_password_hash",
                "os.ssh_keys[0]",
                "os.timezone"
            ]
        );
    }

    #[test]
    fn role_requirements_name_known_roles_and_sane_numbers() {
        let mut roles = BTreeMap::new();
        roles.insert("host".to_string(), RoleRequirements::default());
        roles.insert(
            "gpu".to_string(),
            RoleRequirements {
                min_cpus: 100_000,
                ..Default::default()
            },
        );
        assert_eq!(
            fields(&check_roles(&roles, &ctx())),
            ["roles.gpu", "roles.gpu.min_cpus"]
        );
    }

    #[test]
    fn a_machine_is_told_which_requirement_it_fails() {
        let inv = cosm_wire::Inventory {
            cpu: cosm_wire::Cpu {
                threads: 2,
                ..Default::default()
            },
            memory_bytes: 1024 << 20,
            disks: vec![cosm_wire::Disk {
                name: "vda".into(),
                size_bytes: 8 << 30,
                ..Default::default()
            }],
            ..Default::default()
        };
        let host = RoleRequirements {
            min_cpus: 4,
            min_memory_mib: 2048,
            min_disks: 1,
            min_disk_gib: 20,
        };
        assert_eq!(
            role_failures(Some(&inv), &host),
            [
                "2 CPUs < 4 required",
                "1024 MiB memory < 2048 MiB required",
                "largest disk 8 GiB < 20 GiB required"
            ]
        );
        assert_eq!(
            role_failures(Some(&inv), &RoleRequirements::default()),
            Vec::<String>::new()
        );
        assert_eq!(role_failures(None, &host).len(), 1);
    }

    #[test]
    fn the_provisioning_network_replaces_the_file_subnet_and_keeps_relayed_ones() {
        use cosm_netboot::dhcp::{Boot, DhcpConfig, Mode, Pool, Subnet, UnknownMacs};
        let subnet = |net: &str, first: &str, last: &str| Subnet {
            network: net.parse().unwrap(),
            prefix_len: 24,
            pools: vec![Pool {
                first: first.parse().unwrap(),
                last: last.parse().unwrap(),
            }],
            routers: vec![],
            dns: vec![],
            domain: None,
            mtu: None,
            lease_time_secs: 3600,
            relays: vec![],
        };
        let base = DhcpConfig {
            mode: Mode::Authoritative,
            server_id: "192.0.2.1".parse().unwrap(),
            subnets: vec![
                subnet("198.51.100.0", "198.51.100.10", "198.51.100.20"),
                subnet("192.0.2.0", "192.0.2.10", "192.0.2.20"),
            ],
            unknown_macs: UnknownMacs::Discover,
            max_unknown_leases: 100,
            offer_hold_secs: 30,
            decline_quarantine_secs: 600,
            boot: Boot {
                tftp_server: "192.0.2.1".parse().unwrap(),
                bios_file: "undionly.kpxe".into(),
                uefi_x64_file: "snponly.efi".into(),
                uefi_arm64_file: None,
                http_base: "http://192.0.2.1:8080".into(),
            },
        };
        let mut n = net();
        n.mode = DhcpModeSetting::Off;
        let c = dhcp_config(&base, &n);
        assert_eq!(c.subnets[0], base.subnets[0], "the relayed subnet is kept");
        let p = &c.subnets[1];
        assert_eq!(
            (p.pools[0].first.to_string(), p.pools[0].last.to_string()),
            ("192.0.2.100".into(), "192.0.2.200".into())
        );
        assert_eq!(p.routers, vec!["192.0.2.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(c.mode, Mode::Off);
        n.appliance_ip = "192.0.2.2".parse().unwrap();
        let c = dhcp_config(&base, &n);
        assert_eq!(c.boot.http_base, "http://192.0.2.2:8080");
        assert_eq!(c.boot.tftp_server.to_string(), "192.0.2.2");
    }

    #[test]
    fn effective_settings_say_where_each_value_came_from() {
        let file = Settings {
            network: Some(net()),
            os: OsSettings {
                release: "rocky-9".into(),
                mirror_url: None,
                root_password_hash: Some("$6$a$b".into()),
                ssh_keys: vec![],
                timezone: "UTC".into(),
            },
            roles: default_requirements(),
        };
        let mut stored = file.clone();
        stored.os.timezone = "Europe/Berlin".into();
        let eff = effective(&file, None);
        let get =
            |eff: &[EffectiveSetting], k: &str| eff.iter().find(|e| e.key == k).cloned().unwrap();
        assert_eq!(get(&eff, "os.timezone").source, SettingSource::File);
        assert_eq!(
            get(&eff, "roles.host.min_cpus").source,
            SettingSource::Default
        );
        assert_eq!(get(&eff, "os.root_password_hash").value, "(set)");
        let eff = effective(&file, Some(&stored));
        let tz = get(&eff, "os.timezone");
        assert_eq!(
            (tz.value.as_str(), tz.source),
            ("Europe/Berlin", SettingSource::Store)
        );
        assert_eq!(get(&eff, "network.pool_start").value, "192.0.2.100");
    }
}

/// The settings in force, published to what applies them (DHCP, boot) on every change.
#[derive(Debug)]
pub struct Live {
    /// What the TOML file and defaults give.
    pub file: Settings,
    /// The relayed subnets of the file, which the provisioning subnet must not overlap.
    pub other_subnets: Vec<String>,
    /// Whether the appliance runs a DHCP server (a `[dhcp]` section): without one, DHCP
    /// cannot be turned on without a restart.
    pub dhcp_running: bool,
    effective: tokio::sync::watch::Sender<Settings>,
}

impl Live {
    pub fn new(c: &Config, stored: Option<Settings>) -> Live {
        let file = from_config(c);
        let server_id = c.dhcp.as_ref().map(|d| d.core.server_id);
        let other_subnets = c
            .dhcp
            .as_ref()
            .map(|d| {
                d.core
                    .subnets
                    .iter()
                    .filter(|s| server_id.is_none_or(|id| !s.contains(id)))
                    .map(|s| format!("{}/{}", s.network, s.prefix_len))
                    .collect()
            })
            .unwrap_or_default();
        let (effective, _) = tokio::sync::watch::channel(stored.unwrap_or_else(|| file.clone()));
        Live {
            file,
            other_subnets,
            dhcp_running: c.dhcp.is_some(),
            effective,
        }
    }

    pub fn effective(&self) -> Settings {
        self.effective.borrow().clone()
    }

    /// Changes of the settings in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Settings> {
        self.effective.subscribe()
    }

    fn publish(&self, s: Settings) {
        self.effective.send_replace(s);
    }
}

impl super::App {
    fn settings_context(&self) -> Result<Context, super::AppError> {
        Ok(Context {
            interfaces: interfaces(),
            roles: self
                .store
                .roles()?
                .into_iter()
                .map(|r| r.name.to_string())
                .collect(),
            other_subnets: self.settings.other_subnets.clone(),
        })
    }

    /// What `step` (or everything) refuses in `s`.
    pub fn check_settings(
        &self,
        step: SettingsStep,
        s: &Settings,
    ) -> Result<Vec<FieldError>, super::AppError> {
        let mut errors = check(step, s, &self.settings_context()?);
        if matches!(step, SettingsStep::Network | SettingsStep::All) && !self.settings.dhcp_running
        {
            if let Some(n) = &s.network {
                if n.mode != DhcpModeSetting::Off {
                    errors.push(FieldError {
                        field: "network.mode".into(),
                        message: "this appliance was started without DHCP (no [dhcp] section in its configuration file): add one and restart it to serve DHCP".into(),
                    });
                }
            }
        }
        Ok(errors)
    }

    pub fn settings_view(&self) -> Result<cosm_wire::SettingsView, super::AppError> {
        let stored = self.store.site_settings()?;
        Ok(cosm_wire::SettingsView {
            settings: stored.clone().unwrap_or_else(|| self.settings.file.clone()),
            effective: effective(&self.settings.file, stored.as_ref()),
            interfaces: interfaces(),
            releases: Release::ALL.iter().map(|r| r.id().to_string()).collect(),
            setup_complete: stored.is_some(),
        })
    }

    /// Checks and stores new settings, then puts them in force: DHCP reloads its subnet,
    /// boot scripts and kickstarts use them from the next request.
    pub async fn apply_settings(
        &self,
        s: Settings,
        by: &str,
    ) -> Result<cosm_wire::SettingsView, super::AppError> {
        let errors = self.check_settings(SettingsStep::All, &s)?;
        if let Some(first) = errors.first() {
            return Err(super::AppError::Unprocessable {
                code: "invalid",
                message: format!("{}: {}", first.field, first.message),
            });
        }
        self.store.run(super::Op::PutSettings(s.clone())).await?;
        if let Some(boot) = &self.boot {
            boot.apply_os(&s.os);
        }
        tracing::info!(by, "site settings applied");
        self.settings.publish(s);
        self.settings_view()
    }
}
