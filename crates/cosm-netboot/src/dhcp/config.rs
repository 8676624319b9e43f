//! The checked DHCP configuration the core decides with. The appliance builds it from its
//! TOML file; nothing here parses text.

use std::net::Ipv4Addr;

/// What the DHCP service does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hands out addresses and boot information.
    Authoritative,
    /// Beside another DHCP server: boot information to PXE clients only, never addresses.
    Proxy,
    /// Running but answering nothing: the socket stays bound, so the operator can turn the
    /// service back on without a restart (`server::DhcpHandle::reconfigure`).
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Authoritative => "authoritative",
            Mode::Proxy => "proxy",
            Mode::Off => "off",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a MAC the appliance has no machine record for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownMacs {
    /// Give it an address and boot it into discovery (the agent ramdisk).
    Discover,
    /// Stay silent: only known machines are answered.
    Ignore,
}

/// An inclusive range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }
}

/// An IPv4 subnet served directly or through relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub pools: Vec<Pool>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_time_secs: u32,
    /// Relay addresses (giaddr) whose requests belong to this subnet even though the relay
    /// is not inside it; a relay inside the subnet needs no entry.
    pub relays: Vec<Ipv4Addr>,
}

impl Subnet {
    pub fn mask(&self) -> Ipv4Addr {
        let bits = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        Ipv4Addr::from(bits)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network)
    }
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(ip))
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }
    /// `192.0.2.0/24`: how logs and reports name a subnet.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix_len)
    }
}

/// Boot files and URLs handed to PXE, UEFI HTTP Boot and iPXE clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// next-server (siaddr) and option 66 for TFTP.
    pub tftp_server: Ipv4Addr,
    /// BIOS PXE (option 93 = 0).
    pub bios_file: String,
    /// UEFI x86-64 PXE (7, 9): `ipxe.efi` or `snponly.efi`.
    pub uefi_x64_file: String,
    /// UEFI ARM64 PXE (11), if this rack has such machines.
    pub uefi_arm64_file: Option<String>,
    /// Base URL of the appliance's HTTP boot endpoints, e.g. `http://192.0.2.1:8080`.
    /// UEFI HTTP Boot clients get `<base>/boot/<uefi file>`; iPXE gets its script URL.
    pub http_base: String,
}

/// Everything the DHCP core needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    pub mode: Mode,
    /// Our address on the provisioning network: option 54 and the subnet for requests
    /// that arrive without a relay.
    pub server_id: Ipv4Addr,
    pub subnets: Vec<Subnet>,
    pub unknown_macs: UnknownMacs,
    /// At most this many addresses held (bound or offered) by unknown MACs.
    pub max_unknown_leases: usize,
    /// How long an offered address is held for the client's REQUEST.
    pub offer_hold_secs: u32,
    /// How long a declined address is kept out of use.
    pub decline_quarantine_secs: u32,
    pub boot: Boot,
}

impl DhcpConfig {
    /// The subnet a request belongs to: the relay's (giaddr) if relayed, else the one our
    /// own address is in.
    pub fn subnet_for(&self, giaddr: Ipv4Addr) -> Option<(usize, &Subnet)> {
        if !giaddr.is_unspecified() {
            if let Some(hit) = self
                .subnets
                .iter()
                .enumerate()
                .find(|(_, s)| s.relays.contains(&giaddr))
            {
                return Some(hit);
            }
        }
        let key = if giaddr.is_unspecified() {
            self.server_id
        } else {
            giaddr
        };
        self.subnets
            .iter()
            .enumerate()
            .find(|(_, s)| s.contains(key))
    }

    /// Whether any subnet of this config has `ip` in one of its pools.
    pub fn in_any_pool(&self, ip: Ipv4Addr) -> bool {
        self.subnets.iter().any(|s| s.in_pool(ip))
    }

    /// What differs from `self` to `new`, one line per change, for the log and the report
    /// of a reconfiguration: `mode: authoritative → proxy`, `subnet 192.0.2.0/24 pools:
    /// 192.0.2.100-192.0.2.150 → 192.0.2.200-192.0.2.220`, `subnet 198.51.100.0/24 added`.
    /// Empty when nothing differs.
    pub fn changes_to(&self, new: &DhcpConfig) -> Vec<String> {
        fn list<T: std::fmt::Display>(items: &[T]) -> String {
            if items.is_empty() {
                return "none".into();
            }
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let mut out = Vec::new();
        let mut field = |name: &str, old: String, new: String| {
            if old != new {
                out.push(format!("{name}: {old} → {new}"));
            }
        };
        field("mode", self.mode.to_string(), new.mode.to_string());
        field(
            "server_id",
            self.server_id.to_string(),
            new.server_id.to_string(),
        );
        field(
            "unknown_macs",
            format!("{:?}", self.unknown_macs),
            format!("{:?}", new.unknown_macs),
        );
        field(
            "max_unknown_leases",
            self.max_unknown_leases.to_string(),
            new.max_unknown_leases.to_string(),
        );
        field(
            "offer_hold_secs",
            self.offer_hold_secs.to_string(),
            new.offer_hold_secs.to_string(),
        );
        field(
            "decline_quarantine_secs",
            self.decline_quarantine_secs.to_string(),
            new.decline_quarantine_secs.to_string(),
        );
        field(
            "boot",
            format!("{:?}", self.boot),
            format!("{:?}", new.boot),
        );
        for old in &self.subnets {
            if !new.subnets.iter().any(|n| n.cidr() == old.cidr()) {
                out.push(format!(
                    "subnet {} removed (pools {})",
                    old.cidr(),
                    list(&old.pools)
                ));
            }
        }
        for n in &new.subnets {
            let Some(old) = self.subnets.iter().find(|o| o.cidr() == n.cidr()) else {
                out.push(format!(
                    "subnet {} added (pools {})",
                    n.cidr(),
                    list(&n.pools)
                ));
                continue;
            };
            let c = n.cidr();
            let mut field = |name: &str, o: String, v: String| {
                if o != v {
                    out.push(format!("subnet {c} {name}: {o} → {v}"));
                }
            };
            field("pools", list(&old.pools), list(&n.pools));
            field("routers", list(&old.routers), list(&n.routers));
            field("dns", list(&old.dns), list(&n.dns));
            field(
                "domain",
                format!("{:?}", old.domain),
                format!("{:?}", n.domain),
            );
            field("mtu", format!("{:?}", old.mtu), format!("{:?}", n.mtu));
            field(
                "lease_time_secs",
                old.lease_time_secs.to_string(),
                n.lease_time_secs.to_string(),
            );
            field("relays", list(&old.relays), list(&n.relays));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_math() {
        let s = Subnet {
            network: Ipv4Addr::new(192, 0, 2, 0),
            prefix_len: 24,
            pools: vec![Pool {
                first: Ipv4Addr::new(192, 0, 2, 10),
                last: Ipv4Addr::new(192, 0, 2, 19),
            }],
            routers: vec![],
            dns: vec![],
            domain: None,
            mtu: None,
            lease_time_secs: 60,
            relays: vec![],
        };
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 0, 2, 255));
        assert!(s.contains(Ipv4Addr::new(192, 0, 2, 200)));
        assert!(!s.contains(Ipv4Addr::new(192, 0, 3, 1)));
        assert!(
            s.in_pool(Ipv4Addr::new(192, 0, 2, 19)) && !s.in_pool(Ipv4Addr::new(192, 0, 2, 20))
        );
        assert_eq!(s.pools[0].size(), 10);
    }
}
