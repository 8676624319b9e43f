//! The in-memory lease table the DHCP core decides against, and the known hosts
//! (reservations) it must respect. Loaded from the appliance's store at start; every
//! change the core makes is also returned as a [`Lease`] for the caller to persist.

use super::config::{DhcpConfig, Subnet};
use cosm_wire::{Lease, LeaseState, MacAddr, Timestamp};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// A machine the appliance knows, as DHCP needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub reserved_ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// Recorded only because DHCP saw it network-boot (no operator registered it, no agent
    /// enrolled it): it counts against `max_unknown_leases` like a MAC never seen.
    pub dhcp_only: bool,
}

/// Known machines by MAC, and reserved addresses by IP.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    by_mac: HashMap<MacAddr, Host>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    dhcp_only: usize,
}

impl Hosts {
    pub fn new(hosts: impl IntoIterator<Item = (MacAddr, Host)>) -> Hosts {
        let mut h = Hosts::default();
        for (mac, host) in hosts {
            if let Some(ip) = host.reserved_ip {
                h.by_ip.insert(ip, mac);
            }
            if host.dhcp_only {
                h.dhcp_only += 1;
            }
            if let Some(old) = h.by_mac.insert(mac, host) {
                h.dhcp_only -= usize::from(old.dhcp_only);
            }
        }
        h
    }
    /// Whether an operator registered the MAC or an agent enrolled it: such a machine is
    /// never held back by the cap on unknown MACs.
    pub fn is_registered(&self, mac: &MacAddr) -> bool {
        self.by_mac.get(mac).is_some_and(|h| !h.dhcp_only)
    }
    /// How many hosts DHCP alone recorded.
    pub fn dhcp_only(&self) -> usize {
        self.dhcp_only
    }
    pub fn get(&self, mac: &MacAddr) -> Option<&Host> {
        self.by_mac.get(mac)
    }
    pub fn is_known(&self, mac: &MacAddr) -> bool {
        self.by_mac.contains_key(mac)
    }
    /// The MAC an address is reserved for, if any.
    pub fn reserved_for(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).copied()
    }
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

/// What [`LeaseTable::rebuild_pools`] did for a new configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRebuild {
    /// Leases holding an address that lies in one of the new pools, or is reserved for its
    /// MAC: renewed as before.
    pub leases_kept: usize,
    /// Leases holding an address outside every new pool (and not reserved for their MAC).
    /// They stay in the table (and in the store) until they expire, so nobody else is given
    /// the address meanwhile, but they are not renewed: a REQUEST for one gets a NAK.
    pub leases_outside: Vec<Lease>,
    /// Standing offers whose address is still in a new pool.
    pub offers_kept: usize,
    /// Standing offers dropped: their address is outside every new pool (the client's
    /// REQUEST will be refused and it rediscovers).
    pub offers_dropped: usize,
    /// Expired offers cleared on the way.
    pub offers_expired: usize,
    /// Per subnet of the new config: addresses in its pools and how many are free now
    /// (not bound, offered, quarantined or reserved for someone).
    pub pools: Vec<PoolCount>,
}

/// Addresses of one subnet's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCount {
    /// `192.0.2.0/24`.
    pub subnet: String,
    pub size: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Copy)]
struct Offer {
    ip: Ipv4Addr,
    until: Timestamp,
}

/// Leases by address and by MAC, plus outstanding offers (offers are never persisted: a
/// lost offer only costs the client a retry).
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    offers: HashMap<MacAddr, Offer>,
    offered: HashMap<Ipv4Addr, MacAddr>,
    /// Where the next free-address search starts, per (subnet, pool).
    cursors: HashMap<(usize, usize), u32>,
    /// Count of addresses held by unknown MACs: (computed at, count, allocated since).
    unknown_cache: Option<(Timestamp, usize, usize)>,
}

impl LeaseTable {
    pub fn load(leases: impl IntoIterator<Item = Lease>) -> LeaseTable {
        let mut t = LeaseTable::default();
        for l in leases {
            t.put(l);
        }
        t
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// The lease record (any state) a MAC holds or last held.
    pub fn lease_of(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac).and_then(|ip| self.by_ip.get(ip))
    }

    pub fn lease_at(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// Records a lease (replacing whatever was at its address).
    pub fn put(&mut self, lease: Lease) {
        if let Some(old) = self.by_ip.get(&lease.ip) {
            if old.mac != lease.mac && self.by_mac.get(&old.mac) == Some(&lease.ip) {
                self.by_mac.remove(&old.mac);
            }
        }
        if let Some(prev_ip) = self.by_mac.get(&lease.mac).copied() {
            if prev_ip != lease.ip {
                // A MAC has one address at a time: its previous record is dropped.
                self.by_ip.remove(&prev_ip);
            }
        }
        if lease.state != LeaseState::Declined {
            self.by_mac.insert(lease.mac, lease.ip);
        } else if self.by_mac.get(&lease.mac) == Some(&lease.ip) {
            self.by_mac.remove(&lease.mac);
        }
        self.drop_offer(&lease.mac);
        self.by_ip.insert(lease.ip, lease);
    }

    pub fn offer(&mut self, mac: MacAddr, ip: Ipv4Addr, until: Timestamp) {
        self.drop_offer(&mac);
        self.offers.insert(mac, Offer { ip, until });
        self.offered.insert(ip, mac);
    }

    /// The address offered to this MAC, if the offer still stands.
    pub fn offered_to(&self, mac: &MacAddr, now: Timestamp) -> Option<Ipv4Addr> {
        self.offers.get(mac).filter(|o| o.until > now).map(|o| o.ip)
    }

    pub fn drop_offer(&mut self, mac: &MacAddr) {
        if let Some(o) = self.offers.remove(mac) {
            if self.offered.get(&o.ip) == Some(mac) {
                self.offered.remove(&o.ip);
            }
        }
    }

    /// May `mac` have `ip` now? Not if another MAC holds it (bound or quarantined), has a
    /// standing offer for it, or has it reserved.
    pub fn is_free_for(&self, ip: Ipv4Addr, mac: &MacAddr, now: Timestamp, hosts: &Hosts) -> bool {
        if let Some(owner) = hosts.reserved_for(ip) {
            if owner != *mac {
                return false;
            }
        }
        if let Some(l) = self.by_ip.get(&ip) {
            if l.holds_address(now) && (l.mac != *mac || l.state == LeaseState::Declined) {
                return false;
            }
        }
        if let Some(other) = self.offered.get(&ip) {
            if other != mac && self.offers.get(other).is_some_and(|o| o.until > now) {
                return false;
            }
        }
        true
    }

    /// A free pool address of `subnet` for `mac`, searching each pool from where the last
    /// search stopped so that allocation stays cheap while the pool fills.
    pub fn find_free(
        &mut self,
        subnet_idx: usize,
        subnet: &Subnet,
        mac: &MacAddr,
        now: Timestamp,
        hosts: &Hosts,
    ) -> Option<Ipv4Addr> {
        for (pool_idx, pool) in subnet.pools.iter().enumerate() {
            let first = u32::from(pool.first);
            let size = pool.size();
            let start = self
                .cursors
                .get(&(subnet_idx, pool_idx))
                .copied()
                .unwrap_or(0);
            for step in 0..size {
                let offset = ((u64::from(start) + step) % size) as u32;
                let ip = Ipv4Addr::from(first + offset);
                // Never hand out the network or broadcast address of the subnet.
                if ip == subnet.network || ip == subnet.broadcast() {
                    continue;
                }
                // An address with a lease record of another MAC is kept for that MAC
                // (affinity) while unleased addresses remain; see the second pass below.
                let record_of_other = self.by_ip.get(&ip).is_some_and(|l| l.mac != *mac);
                if !record_of_other && self.is_free_for(ip, mac, now, hosts) {
                    self.cursors
                        .insert((subnet_idx, pool_idx), offset.wrapping_add(1) % size as u32);
                    return Some(ip);
                }
            }
        }
        // Every address has a record: take the first one that has expired or was released.
        for pool in &subnet.pools {
            for n in u32::from(pool.first)..=u32::from(pool.last) {
                let ip = Ipv4Addr::from(n);
                if ip != subnet.network
                    && ip != subnet.broadcast()
                    && self.is_free_for(ip, mac, now, hosts)
                {
                    return Some(ip);
                }
            }
        }
        None
    }

    /// [`LeaseTable::unknown_held`], recounted at most once a second (a full count is a
    /// walk over every lease) plus the allocations to unknown MACs made since.
    pub fn unknown_held_cached(&mut self, now: Timestamp, hosts: &Hosts) -> usize {
        match self.unknown_cache {
            Some((at, n, since)) if now.as_millis().saturating_sub(at.as_millis()) < 1000 => {
                n + since
            }
            _ => {
                let n = self.unknown_held(now, hosts);
                self.unknown_cache = Some((now, n, 0));
                n
            }
        }
    }

    /// Notes one more address given to an unknown MAC, for [`LeaseTable::unknown_held_cached`].
    pub fn note_unknown_allocation(&mut self) {
        if let Some((_, _, since)) = &mut self.unknown_cache {
            *since += 1;
        }
    }

    /// Addresses held (bound or offered) by MACs the appliance does not know, or knows only
    /// because DHCP saw them (not registered, not enrolled).
    pub fn unknown_held(&self, now: Timestamp, hosts: &Hosts) -> usize {
        let bound = self
            .by_ip
            .values()
            .filter(|l| {
                l.state == LeaseState::Bound && l.holds_address(now) && !hosts.is_registered(&l.mac)
            })
            .count();
        let offered = self
            .offers
            .iter()
            .filter(|(mac, o)| {
                o.until > now
                    && !hosts.is_registered(mac)
                    && self.lease_of(mac).is_none_or(|l| !l.holds_address(now))
            })
            .count();
        bound + offered
    }

    /// Rebuilds the per-pool state for a new configuration: leases are kept (they are the
    /// store's), offers outside every new pool are dropped, the free-address cursors
    /// (indexed by subnet and pool position, which a new config reorders) start over, and
    /// the cached count of addresses held by unknown MACs is recounted. Returns what it
    /// found, including the leases that are now outside every pool.
    pub fn rebuild_pools(
        &mut self,
        cfg: &DhcpConfig,
        hosts: &Hosts,
        now: Timestamp,
    ) -> PoolRebuild {
        let mut report = PoolRebuild::default();
        let offers: Vec<(MacAddr, Offer)> = self.offers.iter().map(|(m, o)| (*m, *o)).collect();
        for (mac, offer) in offers {
            if offer.until <= now {
                report.offers_expired += 1;
                self.drop_offer(&mac);
            } else if cfg.in_any_pool(offer.ip) {
                report.offers_kept += 1;
            } else {
                report.offers_dropped += 1;
                self.drop_offer(&mac);
            }
        }
        let mut leases: Vec<&Lease> = self
            .by_ip
            .values()
            .filter(|l| l.state == LeaseState::Bound && l.holds_address(now))
            .collect();
        leases.sort_by_key(|l| l.ip);
        for l in leases {
            let reserved = hosts.reserved_for(l.ip) == Some(l.mac)
                && cfg.subnets.iter().any(|s| s.contains(l.ip));
            if reserved || cfg.in_any_pool(l.ip) {
                report.leases_kept += 1;
            } else {
                report.leases_outside.push(l.clone());
            }
        }
        self.cursors.clear();
        self.unknown_cache = None;
        // Free addresses as `find_free` judges them: not held by a lease, a standing offer
        // or a reservation. Counted from the tables, not by walking the pools (a /8 pool).
        let mut taken: std::collections::HashSet<Ipv4Addr> = hosts.by_ip.keys().copied().collect();
        taken.extend(
            self.by_ip
                .values()
                .filter(|l| l.holds_address(now))
                .map(|l| l.ip),
        );
        taken.extend(self.offers.values().filter(|o| o.until > now).map(|o| o.ip));
        report.pools = cfg
            .subnets
            .iter()
            .map(|s| {
                let size: u64 = s.pools.iter().map(|p| p.size()).sum();
                let unusable = [s.network, s.broadcast()]
                    .into_iter()
                    .filter(|ip| s.in_pool(*ip))
                    .count() as u64;
                let held = taken
                    .iter()
                    .filter(|ip| s.in_pool(**ip) && **ip != s.network && **ip != s.broadcast())
                    .count() as u64;
                PoolCount {
                    subnet: s.cidr(),
                    size,
                    free: size.saturating_sub(unusable + held),
                }
            })
            .collect();
        report
    }

    /// Bound, unexpired leases within a subnet (for pool-use figures).
    pub fn bound_in(&self, subnet: &Subnet, now: Timestamp) -> usize {
        self.by_ip
            .values()
            .filter(|l| {
                l.state == LeaseState::Bound && l.holds_address(now) && subnet.in_pool(l.ip)
            })
            .count()
    }
}
