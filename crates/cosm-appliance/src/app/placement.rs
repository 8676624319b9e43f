//! Where a virtual machine runs (issue 12): the host with the most memory left after it,
//! then the least loaded, among the hosts it fits on; or, when it fits nowhere, why not on
//! each host. Pure: the caller gathers the hosts' capacity (from their agents), what is
//! already placed on them and their load; nothing here reads a clock or the store.
//!
//! Capacity may be overcommitted by configured ratios (CPU usually is, memory usually is
//! not); storage never is. An anti-affinity group keeps its VMs on different hosts.

use cosm_wire::MacAddr;
use std::collections::BTreeSet;
use std::fmt;

/// How far allocation may exceed a host's physical capacity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Overcommit {
    /// vCPUs per physical CPU thread (e.g. 4.0).
    pub cpu: f64,
    /// Memory allocated per byte of physical memory (1.0: none).
    pub memory: f64,
}

impl Default for Overcommit {
    fn default() -> Overcommit {
        Overcommit {
            cpu: 4.0,
            memory: 1.0,
        }
    }
}

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    pub host: MacAddr,
    /// Physical capacity its agent reports.
    pub cpus: u32,
    pub memory_mib: u64,
    pub storage_gib: u64,
    /// Allocated to the VMs already placed on it.
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    pub used_storage_gib: u64,
    /// Its CPU use, 0–100 (from heartbeats): the tie-breaker between equally free hosts.
    pub cpu_percent: f32,
    /// Anti-affinity groups of the VMs on it.
    pub groups: BTreeSet<String>,
}

/// What a VM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub storage_gib: u64,
    pub anti_affinity: Option<String>,
}

/// Why a VM does not fit a host.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Cpu { need: u32, free: u64 },
    Memory { need: u64, free: u64 },
    Storage { need: u64, free: u64 },
    AntiAffinity { group: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Cpu { need, free } => write!(f, "{free} vCPUs free, {need} needed"),
            Refusal::Memory { need, free } => write!(f, "{free} MiB free, {need} needed"),
            Refusal::Storage { need, free } => write!(f, "{free} GiB free, {need} needed"),
            Refusal::AntiAffinity { group } => {
                write!(f, "already runs a VM of anti-affinity group {group:?}")
            }
        }
    }
}

/// No host fits: each host's reason (the first check it fails), or no hosts at all.
#[derive(Debug, Clone, PartialEq)]
pub struct NoHost {
    pub request: Request,
    pub refusals: Vec<(MacAddr, Refusal)>,
}

impl fmt::Display for NoHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.request;
        write!(
            f,
            "no host fits {} vCPUs, {} MiB, {} GiB",
            r.vcpus, r.memory_mib, r.storage_gib
        )?;
        if self.refusals.is_empty() {
            return write!(
                f,
                ": there is no host (a deployed or active machine of role host whose agent reports its capacity)"
            );
        }
        for (i, (host, why)) in self.refusals.iter().enumerate() {
            write!(f, "{} {host}: {why}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

/// Capacity times the ratio, less what is used; never negative.
fn free(capacity: u64, ratio: f64, used: u64) -> u64 {
    ((capacity as f64 * ratio).floor() as u64).saturating_sub(used)
}

/// Whether `req` fits `h`, and if not the first reason.
pub fn fits(h: &HostLoad, req: &Request, oc: &Overcommit) -> Result<(), Refusal> {
    if let Some(group) = &req.anti_affinity {
        if h.groups.contains(group) {
            return Err(Refusal::AntiAffinity {
                group: group.clone(),
            });
        }
    }
    let cpu_free = free(u64::from(h.cpus), oc.cpu, u64::from(h.used_vcpus));
    if u64::from(req.vcpus) > cpu_free {
        return Err(Refusal::Cpu {
            need: req.vcpus,
            free: cpu_free,
        });
    }
    let mem_free = free(h.memory_mib, oc.memory, h.used_memory_mib);
    if req.memory_mib > mem_free {
        return Err(Refusal::Memory {
            need: req.memory_mib,
            free: mem_free,
        });
    }
    let disk_free = h.storage_gib.saturating_sub(h.used_storage_gib);
    if req.storage_gib > disk_free {
        return Err(Refusal::Storage {
            need: req.storage_gib,
            free: disk_free,
        });
    }
    Ok(())
}

/// The host for `req`: among those it fits, the most memory left after it, then the lowest
/// CPU use, then the lowest MAC (so the choice is the same for the same inputs).
pub fn place(hosts: &[HostLoad], req: &Request, oc: &Overcommit) -> Result<MacAddr, NoHost> {
    let mut refusals = Vec::new();
    let mut best: Option<(&HostLoad, u64)> = None;
    for h in hosts {
        match fits(h, req, oc) {
            Err(why) => refusals.push((h.host, why)),
            Ok(()) => {
                let left = free(h.memory_mib, oc.memory, h.used_memory_mib) - req.memory_mib;
                let better = match best {
                    None => true,
                    Some((b, b_left)) => {
                        (
                            left,
                            std::cmp::Reverse(h.cpu_percent.to_bits()),
                            std::cmp::Reverse(h.host),
                        ) > (
                            b_left,
                            std::cmp::Reverse(b.cpu_percent.to_bits()),
                            std::cmp::Reverse(b.host),
                        )
                    }
                };
                if better {
                    best = Some((h, left));
                }
            }
        }
    }
    best.map(|(h, _)| h.host).ok_or_else(|| NoHost {
        request: req.clone(),
        refusals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(n: u8, cpus: u32, memory_mib: u64) -> HostLoad {
        HostLoad {
            host: MacAddr::new([0x52, 0x54, 0, 0, 0x0f, n]),
            cpus,
            memory_mib,
            storage_gib: 100,
            used_vcpus: 0,
            used_memory_mib: 0,
            used_storage_gib: 0,
            cpu_percent: 0.0,
            groups: BTreeSet::new(),
        }
    }

    fn vm(vcpus: u32, memory_mib: u64, group: Option<&str>) -> Request {
        Request {
            vcpus,
            memory_mib,
            storage_gib: 10,
            anti_affinity: group.map(str::to_string),
        }
    }

    /// Places each request in turn, recording it on the chosen host as the appliance will.
    fn place_all(hosts: &mut [HostLoad], reqs: &[Request], oc: &Overcommit) -> Vec<Option<usize>> {
        reqs.iter()
            .map(|r| {
                let mac = place(hosts, r, oc).ok()?;
                let i = hosts.iter().position(|h| h.host == mac)?;
                let h = &mut hosts[i];
                h.used_vcpus += r.vcpus;
                h.used_memory_mib += r.memory_mib;
                h.used_storage_gib += r.storage_gib;
                if let Some(g) = &r.anti_affinity {
                    h.groups.insert(g.clone());
                }
                Some(i)
            })
            .collect()
    }

    #[test]
    fn equal_hosts_get_vms_in_turn() {
        let mut hosts = vec![host(1, 8, 8192), host(2, 8, 8192), host(3, 8, 8192)];
        let reqs = vec![vm(1, 1024, None); 6];
        let placed = place_all(&mut hosts, &reqs, &Overcommit::default());
        let per_host: Vec<usize> = (0..3)
            .map(|i| placed.iter().filter(|p| **p == Some(i)).count())
            .collect();
        assert_eq!(per_host, vec![2, 2, 2], "{placed:?}");
    }

    #[test]
    fn the_most_free_memory_wins_then_the_least_load() {
        let mut hosts = vec![host(1, 8, 4096), host(2, 8, 16384), host(3, 8, 16384)];
        hosts[1].cpu_percent = 80.0;
        hosts[2].cpu_percent = 10.0;
        let oc = Overcommit::default();
        assert_eq!(place(&hosts, &vm(1, 1024, None), &oc), Ok(hosts[2].host));
        hosts[2].used_memory_mib = 8192;
        assert_eq!(place(&hosts, &vm(1, 1024, None), &oc), Ok(hosts[1].host));
    }

    #[test]
    fn a_vm_that_fits_nowhere_says_why_for_each_host() {
        let mut hosts = vec![host(1, 2, 4096), host(2, 64, 1024), host(3, 64, 65536)];
        hosts[2].groups.insert("db".into());
        let err = place(&hosts, &vm(16, 2048, Some("db")), &Overcommit::default()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.refusals.len(), 3, "{text}");
        assert!(
            text.starts_with("no host fits 16 vCPUs, 2048 MiB, 10 GiB: "),
            "{text}"
        );
        assert!(
            text.contains("52:54:00:00:0f:01: 8 vCPUs free, 16 needed"),
            "{text}"
        );
        assert!(
            text.contains("52:54:00:00:0f:02: 1024 MiB free, 2048 needed"),
            "{text}"
        );
        assert!(text.contains("anti-affinity group \"db\""), "{text}");
        let none = place(&[], &vm(1, 1, None), &Overcommit::default()).unwrap_err();
        assert!(none.to_string().contains("there is no host"), "{none}");
    }

    #[test]
    fn anti_affinity_keeps_a_group_apart_until_no_host_is_left() {
        let mut hosts = vec![host(1, 8, 8192), host(2, 8, 8192), host(3, 8, 8192)];
        let reqs = vec![vm(1, 512, Some("web")); 4];
        let placed = place_all(&mut hosts, &reqs, &Overcommit::default());
        let mut used: Vec<usize> = placed[..3].iter().map(|p| p.unwrap()).collect();
        used.sort_unstable();
        assert_eq!(used, vec![0, 1, 2]);
        assert_eq!(placed[3], None, "a fourth VM of the group has no host left");
    }

    #[test]
    fn overcommit_ratios_are_honoured() {
        let h = host(1, 4, 4096);
        let oc = Overcommit {
            cpu: 2.0,
            memory: 1.0,
        };
        assert!(fits(&h, &vm(8, 1024, None), &oc).is_ok());
        assert_eq!(
            fits(&h, &vm(9, 1024, None), &oc),
            Err(Refusal::Cpu { need: 9, free: 8 })
        );
        assert_eq!(
            fits(&h, &vm(1, 4097, None), &oc),
            Err(Refusal::Memory {
                need: 4097,
                free: 4096
            })
        );
    }

    proptest! {
        /// Whatever the hosts and requests, a chosen host has room for the VM under the
        /// ratios and no VM of its group; a refusal gives every host a true reason.
        #[test]
        fn placement_never_overfills_a_host(
            caps in prop::collection::vec((1u32..64, 256u64..65536, 1u64..500, 0u32..128, 0u64..65536, 0u64..500), 0..6),
            reqs in prop::collection::vec((1u32..16, 64u64..16384, 0u64..100, prop::option::of(0u8..3)), 1..20),
            cpu_ratio in 1.0f64..8.0,
        ) {
            let oc = Overcommit { cpu: cpu_ratio, memory: 1.0 };
            let mut hosts: Vec<HostLoad> = caps.iter().enumerate().map(|(i, c)| HostLoad {
                host: MacAddr::new([2, 0, 0, 0, 0, i as u8]),
                cpus: c.0, memory_mib: c.1, storage_gib: c.2,
                used_vcpus: c.3, used_memory_mib: c.4, used_storage_gib: 0,
                cpu_percent: 0.0, groups: BTreeSet::new(),
            }).collect();
            for (vcpus, mem, disk, group) in reqs {
                let req = Request { vcpus, memory_mib: mem, storage_gib: disk, anti_affinity: group.map(|g| format!("g{g}")) };
                match place(&hosts, &req, &oc) {
                    Ok(mac) => {
                        let h = hosts.iter_mut().find(|h| h.host == mac).unwrap();
                        prop_assert!(fits(h, &req, &oc).is_ok());
                        h.used_vcpus += vcpus;
                        h.used_memory_mib += mem;
                        h.used_storage_gib += disk;
                        prop_assert!(f64::from(h.used_vcpus) <= (f64::from(h.cpus) * cpu_ratio).floor());
                        prop_assert!(h.used_memory_mib <= h.memory_mib);
                        prop_assert!(h.used_storage_gib <= h.storage_gib);
                        if let Some(g) = &req.anti_affinity {
                            prop_assert!(!h.groups.contains(g));
                            h.groups.insert(g.clone());
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.refusals.len(), hosts.len());
                        for (mac, why) in &e.refusals {
                            let h = hosts.iter().find(|h| h.host == *mac).unwrap();
                            prop_assert_eq!(fits(h, &req, &oc), Err(why.clone()));
                        }
                    }
                }
            }
        }
    }
}
