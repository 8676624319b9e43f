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
