//! Role rules: which role a newly discovered machine gets.
//!
//! Rules are tried in order of priority (lower first, then oldest first); the first rule
//! whose every condition holds gives its role. A machine no rule matches stays
//! `discovered` for a person to decide. Pure functions only: no store access here.

use cosm_wire::{Inventory, MacAddr, Rule, RuleMatch};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Does `m` hold for this machine? Inventory conditions never hold for a machine whose
/// inventory is not known yet (pre-registered by MAC only).
pub fn matches(m: &RuleMatch, mac: &MacAddr, inventory: Option<&Inventory>) -> bool {
    if m.is_empty() {
        return false;
    }
    if let Some(want) = &m.mac {
        if want != mac {
            return false;
        }
    }
    if let Some(prefix) = &m.mac_prefix {
        if !prefix.matches(mac) {
            return false;
        }
    }
    let needs_inventory = m.min_cpus.is_some()
        || m.max_cpus.is_some()
        || m.min_memory_mib.is_some()
        || m.max_memory_mib.is_some()
        || m.min_disks.is_some()
        || m.max_disks.is_some()
        || m.min_disk_gib.is_some()
        || m.vendor_contains.is_some()
        || m.product_contains.is_some();
    if !needs_inventory {
        return true;
    }
    let Some(inv) = inventory else {
        return false;
    };
    let cpus = inv.cpu_count();
    let mem_mib = inv.memory_bytes / MIB;
    let disks = inv.disks.len() as u32;
    let largest_gib = inv.disks.iter().map(|d| d.size_bytes).max().unwrap_or(0) / GIB;
    let at_least = |v: u64, min: Option<u64>| min.is_none_or(|min| v >= min);
    let at_most = |v: u64, max: Option<u64>| max.is_none_or(|max| v <= max);
    let contains = |have: &Option<String>, want: &Option<String>| match want {
        None => true,
        Some(w) => have
            .as_deref()
            .is_some_and(|h| h.to_lowercase().contains(&w.to_lowercase())),
    };
    at_least(cpus.into(), m.min_cpus.map(u64::from))
        && at_most(cpus.into(), m.max_cpus.map(u64::from))
        && at_least(mem_mib, m.min_memory_mib)
        && at_most(mem_mib, m.max_memory_mib)
        && at_least(disks.into(), m.min_disks.map(u64::from))
        && at_most(disks.into(), m.max_disks.map(u64::from))
        && at_least(largest_gib, m.min_disk_gib)
        && contains(&inv.dmi.vendor, &m.vendor_contains)
        && contains(&inv.dmi.product, &m.product_contains)
}

/// The first rule (in evaluation order) that matches, if any.
pub fn first_match<'a>(
    rules: &'a [Rule],
    mac: &MacAddr,
    inventory: Option<&Inventory>,
) -> Option<&'a Rule> {
    let mut order: Vec<&Rule> = rules.iter().collect();
    order.sort_by_key(|r| (r.priority, r.id));
    order
        .into_iter()
        .find(|r| matches(&r.matches, mac, inventory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::{Cpu, Disk, Dmi, Timestamp};

    fn rule(id: u64, priority: i32, role: &str, m: RuleMatch) -> Rule {
        Rule {
            id,
            role: role.parse().unwrap(),
            priority,
            description: String::new(),
            matches: m,
            created_at: Timestamp::from_millis(0),
        }
    }

    fn inv(cpus: u32, mem_gib: u64, disks_gib: &[u64], vendor: &str, product: &str) -> Inventory {
        Inventory {
            cpu: Cpu {
                model: "x".into(),
                sockets: 1,
                cores: cpus,
                threads: cpus,
            },
            memory_bytes: mem_gib * GIB,
            disks: disks_gib
                .iter()
                .enumerate()
                .map(|(i, g)| Disk {
                    name: format!("sd{i}"),
                    size_bytes: g * GIB,
                    ..Default::default()
                })
                .collect(),
            dmi: Dmi {
                vendor: Some(vendor.into()),
                product: Some(product.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_mac_and_prefix() {
        let rules = vec![
            rule(
                1,
                100,
                "web",
                RuleMatch {
                    mac: Some(mac("52:54:00:00:00:01")),
                    ..Default::default()
                },
            ),
            rule(
                2,
                100,
                "host",
                RuleMatch {
                    mac_prefix: Some("52:54:00".parse().unwrap()),
                    ..Default::default()
                },
            ),
        ];
        assert_eq!(
            first_match(&rules, &mac("52:54:00:00:00:01"), None)
                .unwrap()
                .role
                .as_str(),
            "web"
        );
        assert_eq!(
            first_match(&rules, &mac("52:54:00:00:00:02"), None)
                .unwrap()
                .role
                .as_str(),
            "host"
        );
        assert!(first_match(&rules, &mac("52:55:00:00:00:02"), None).is_none());
    }

    #[test]
    fn priority_beats_creation_order_and_ties_go_to_the_oldest() {
        let any_qemu = RuleMatch {
            mac_prefix: Some("52:54:00".parse().unwrap()),
            ..Default::default()
        };
        let rules = vec![
            rule(1, 100, "web", any_qemu.clone()),
            rule(2, 10, "storage", any_qemu.clone()),
            rule(3, 10, "host", any_qemu),
        ];
        assert_eq!(
            first_match(&rules, &mac("52:54:00:00:00:09"), None)
                .unwrap()
                .id,
            2
        );
    }

    #[test]
    fn inventory_predicates() {
        let big = RuleMatch {
            min_cpus: Some(16),
            min_memory_mib: Some(64 * 1024),
            vendor_contains: Some("dell".into()),
            ..Default::default()
        };
        let disky = RuleMatch {
            min_disks: Some(4),
            min_disk_gib: Some(1000),
            ..Default::default()
        };
        let rules = vec![rule(1, 100, "host", big), rule(2, 100, "storage", disky)];
        let m = mac("00:11:22:33:44:55");
        let hv = inv(32, 128, &[480], "Dell Inc.", "PowerEdge R640");
        assert_eq!(
            first_match(&rules, &m, Some(&hv)).unwrap().role.as_str(),
            "host"
        );
        let st = inv(8, 32, &[480, 4000, 4000, 4000], "Supermicro", "SSG-6029P");
        assert_eq!(
            first_match(&rules, &m, Some(&st)).unwrap().role.as_str(),
            "storage"
        );
        let small = inv(4, 8, &[240], "Dell Inc.", "OptiPlex");
        assert!(first_match(&rules, &m, Some(&small)).is_none());
        // Without an inventory, inventory rules cannot match.
        assert!(first_match(&rules, &m, None).is_none());
    }

    #[test]
    fn boundaries_are_inclusive() {
        let r = RuleMatch {
            min_cpus: Some(8),
            max_cpus: Some(8),
            product_contains: Some("r640".into()),
            ..Default::default()
        };
        let m = mac("00:11:22:33:44:55");
        assert!(matches(
            &r,
            &m,
            Some(&inv(8, 1, &[], "Dell", "PowerEdge R640"))
        ));
        assert!(!matches(
            &r,
            &m,
            Some(&inv(9, 1, &[], "Dell", "PowerEdge R640"))
        ));
        assert!(!matches(
            &r,
            &m,
            Some(&inv(8, 1, &[], "Dell", "PowerEdge R740"))
        ));
    }

    #[test]
    fn empty_match_never_matches() {
        assert!(!matches(
            &RuleMatch::default(),
            &mac("00:11:22:33:44:55"),
            None
        ));
    }
}
