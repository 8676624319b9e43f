//! The network side of the configuration: DHCP (subnets, pools, boot options) and TFTP.

use super::file;
use super::install::KeyError;
use super::DhcpSettings;
use cosm_netboot::dhcp::server::Listen;
use cosm_netboot::dhcp::{Boot, DhcpConfig, Mode, Pool, Subnet, UnknownMacs};
use cosm_netboot::tftp::TftpSettings;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

pub(super) fn tftp_settings(t: file::Tftp, root: &Path) -> Result<TftpSettings, KeyError> {
    let listen: SocketAddr = t.listen.parse().map_err(|_| {
        (
            "tftp.listen".to_string(),
            format!("{:?} is not an address:port such as 0.0.0.0:69", t.listen),
        )
    })?;
    let range = |key: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err((format!("tftp.{key}"), format!("{v} is outside {lo}..={hi}")))
        }
    };
    range("max_transfers", t.max_transfers as u64, 1, 100_000)?;
    // RFC 2348 allows 8..=65464; larger than the MTU only makes fragments.
    range("block_size_limit", t.block_size_limit.into(), 512, 65464)?;
    range("window_size_limit", t.window_size_limit.into(), 1, 65535)?;
    range("timeout_ms", t.timeout_ms, 100, 255_000)?;
    range("max_send_retries", t.max_send_retries.into(), 1, 100)?;
    range("cache_mib", t.cache_mib, 0, 1 << 20)?;
    Ok(TftpSettings {
        listen,
        root: root.to_path_buf(),
        max_transfers: t.max_transfers,
        block_size_limit: t.block_size_limit,
        window_size_limit: t.window_size_limit,
        timeout: std::time::Duration::from_millis(t.timeout_ms),
        max_send_retries: t.max_send_retries,
        cache_bytes: t.cache_mib << 20,
    })
}

fn ipv4(key: &str, s: &str) -> Result<Ipv4Addr, KeyError> {
    s.trim()
        .parse()
        .map_err(|_| (key.to_string(), format!("{s:?} is not an IPv4 address")))
}

pub(super) fn dhcp_settings(
    d: file::Dhcp,
    api_listen: SocketAddr,
) -> Result<Option<DhcpSettings>, KeyError> {
    let k = |name: &str| format!("dhcp.{name}");
    let mode = match d.mode.as_str() {
        "off" => return Ok(None),
        "authoritative" => Mode::Authoritative,
        "proxy" => Mode::Proxy,
        other => {
            return Err((
                k("mode"),
                format!("{other:?} is not one of authoritative, proxy, off"),
            ))
        }
    };
    // In proxy mode another DHCP server owns the segment, and so do its routers: what IPv6
    // hosts there are told is theirs to say.
    let router_advertisements = match (d.router_advertisements, mode) {
        (Some(true), Mode::Proxy) => {
            return Err((
                k("router_advertisements"),
                "true needs mode = \"authoritative\": in proxy mode another DHCP server owns the segment, and what its IPv6 hosts are told is that network's business (set it to false, or leave it out)".into(),
            ))
        }
        (Some(on), _) => on,
        (None, mode) => mode == Mode::Authoritative,
    };
    let listen: SocketAddrV4 = d.listen.parse().map_err(|_| {
        (
            k("listen"),
            format!(
                "{:?} is not an IPv4 address:port such as 0.0.0.0:67",
                d.listen
            ),
        )
    })?;
    let server_id = ipv4(&k("server_id"), &d.server_id)?;
    if server_id.is_unspecified() || server_id.is_broadcast() {
        return Err((
            k("server_id"),
            "must be this appliance's address on the provisioning network".into(),
        ));
    }
    let unknown_macs = match d.unknown_macs.as_str() {
        "discover" => UnknownMacs::Discover,
        "ignore" => UnknownMacs::Ignore,
        other => {
            return Err((
                k("unknown_macs"),
                format!("{other:?} is not one of discover, ignore"),
            ))
        }
    };
    if d.probe_timeout_ms > 5000 {
        return Err((k("probe_timeout_ms"), "must be 0 (off) to 5000 ms".into()));
    }
    if !(1..=3600).contains(&d.offer_hold_secs) {
        return Err((k("offer_hold_secs"), "must be 1..=3600".into()));
    }
    let mut subnets: Vec<Subnet> = Vec::new();
    for (i, s) in d.subnets.into_iter().enumerate() {
        let sk = |name: &str| format!("dhcp.subnets[{i}].{name}");
        let (net, len) = s.cidr.split_once('/').ok_or_else(|| {
            (
                sk("cidr"),
                format!("{:?} is not a network such as 192.0.2.0/24", s.cidr),
            )
        })?;
        let network = ipv4(&sk("cidr"), net)?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| (sk("cidr"), format!("prefix length {len:?} must be 8..=30")))?;
        let mut subnet = Subnet {
            network,
            prefix_len,
            pools: Vec::new(),
            routers: Vec::new(),
            dns: Vec::new(),
            domain: s.domain.clone(),
            mtu: s.mtu,
            lease_time_secs: s.lease_time_secs,
            relays: Vec::new(),
        };
        if u32::from(network) & !u32::from(subnet.mask()) != 0 {
            return Err((
                sk("cidr"),
                format!("{} has host bits set for /{prefix_len}", s.cidr),
            ));
        }
        if !(10..=31_536_000).contains(&s.lease_time_secs) {
            return Err((
                sk("lease_time_secs"),
                "must be 10..=31536000 (seconds)".into(),
            ));
        }
        if let Some(mtu) = s.mtu {
            if mtu < 576 {
                return Err((sk("mtu"), "must be at least 576".into()));
            }
        }
        for (j, p) in s.pools.iter().enumerate() {
            let pk = format!("dhcp.subnets[{i}].pools[{j}]");
            let (a, b) = p.split_once('-').ok_or_else(|| {
                (
                    pk.clone(),
                    format!("{p:?} is not a range such as 192.0.2.100-192.0.2.200"),
                )
            })?;
            let pool = Pool {
                first: ipv4(&pk, a)?,
                last: ipv4(&pk, b)?,
            };
            if pool.first > pool.last || !subnet.contains(pool.first) || !subnet.contains(pool.last)
            {
                return Err((
                    pk,
                    format!("{p} is not an ascending range inside {}", s.cidr),
                ));
            }
            let overlaps = subnets
                .iter()
                .flat_map(|o| o.pools.iter())
                .chain(subnet.pools.iter())
                .any(|o| o.first <= pool.last && pool.first <= o.last);
            if overlaps {
                return Err((pk, format!("{p} overlaps another pool")));
            }
            subnet.pools.push(pool);
        }
        subnet.routers = s
            .routers
            .iter()
            .map(|r| ipv4(&sk("routers"), r))
            .collect::<Result<_, _>>()?;
        subnet.dns = s
            .dns
            .iter()
            .map(|r| ipv4(&sk("dns"), r))
            .collect::<Result<_, _>>()?;
        subnet.relays = s
            .relays
            .iter()
            .map(|r| ipv4(&sk("relays"), r))
            .collect::<Result<_, _>>()?;
        subnets.push(subnet);
    }
    if subnets.is_empty() && mode == Mode::Authoritative {
        return Err((
            k("subnets"),
            "authoritative mode needs at least one [[dhcp.subnets]]".into(),
        ));
    }
    let tftp_server = match &d.boot.tftp_server {
        Some(t) => ipv4("dhcp.boot.tftp_server", t)?,
        None => server_id,
    };
    let http_base = d
        .boot
        .http_base
        .clone()
        .unwrap_or_else(|| format!("http://{server_id}:{}", api_listen.port()))
        .trim_end_matches('/')
        .to_string();
    if !http_base.starts_with("http://") && !http_base.starts_with("https://") {
        return Err((
            "dhcp.boot.http_base".into(),
            format!("{http_base:?} is not an http:// URL"),
        ));
    }
    let core = DhcpConfig {
        mode,
        server_id,
        subnets,
        unknown_macs,
        max_unknown_leases: d.max_unknown_leases,
        offer_hold_secs: d.offer_hold_secs,
        decline_quarantine_secs: d.decline_quarantine_secs,
        boot: Boot {
            tftp_server,
            bios_file: d.boot.bios_file.unwrap_or_else(|| "undionly.kpxe".into()),
            // snponly.efi drives the NIC through the firmware's own SNP and hands it back on
            // exit; ipxe.efi (its own drivers) hangs OVMF when it exits to the next boot
            // option, which is how a deployed UEFI machine reaches its disk.
            uefi_x64_file: d.boot.uefi_x64_file.unwrap_or_else(|| "snponly.efi".into()),
            uefi_arm64_file: d.boot.uefi_arm64_file,
            http_base,
        },
    };
    let listen = Listen {
        addr: listen,
        interface: d.interface,
        client_port: d.client_port,
        relay_port: d.relay_port,
        per_mac_rate: d.per_mac_rate,
        per_relay_rate: d.per_relay_rate,
        probe_timeout_ms: d.probe_timeout_ms,
    };
    let discovered_expiry = (d.discovered_expiry_secs > 0)
        .then(|| std::time::Duration::from_secs(d.discovered_expiry_secs));
    Ok(Some(DhcpSettings {
        core,
        listen,
        discovered_expiry,
        router_advertisements,
    }))
}
