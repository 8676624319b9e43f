//! Tenant networks, ports and security groups (issue 14): what may be created, changed
//! and deleted, inside commands. What each host is told to make of them is
//! [`super::App::host_networks`].

use crate::store::{StoreError, Tx};
use cosm_wire::{
    allocate, free_vni, is_host_address, port_device, CreateNetwork, CreatePort, GroupMembers,
    HostNetwork, HostNetworks, HostPort, MacAddr, Network, NetworkName, Port, PortOwner, Remote,
    SecGroupName, SecurityGroup, Vm, VmName,
};
use std::collections::BTreeSet;

/// Records a network: its VNI is the one asked for (if free) or the lowest free one.
pub(super) fn create_network(tx: &mut Tx<'_>, req: &CreateNetwork) -> Result<Network, StoreError> {
    if tx.network(&req.name)?.is_some() {
        return Err(StoreError::conflict(format!(
            "a network named {} already exists",
            req.name
        )));
    }
    let taken = tx.network_vnis()?;
    if let Some(v) = req.vni.filter(|v| taken.contains(v)) {
        return Err(StoreError::Invalid {
            field: "vni",
            message: format!("VNI {v} is used by another network"),
        });
    }
    let vni = match req.vni {
        Some(v) => v,
        None => free_vni(&taken).ok_or_else(|| StoreError::conflict("every VNI is used"))?,
    };
    let net = req.validate(vni).map_err(|e| StoreError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    tx.put_network(&net)?;
    Ok(net)
}

pub(super) fn delete_network(tx: &mut Tx<'_>, name: &NetworkName) -> Result<(), StoreError> {
    let net = tx.network(name)?.ok_or_else(|| StoreError::NotFound {
        what: "network",
        key: name.to_string(),
    })?;
    let on_it: Vec<String> = tx
        .all_ports()?
        .into_iter()
        .filter(|p| &p.network == name)
        .map(|p| owner_text(&p))
        .collect();
    if !on_it.is_empty() {
        return Err(StoreError::conflict(format!(
            "network {name} still has {} port(s) ({}): delete them (or their VMs) first",
            on_it.len(),
            on_it.join(", ")
        )));
    }
    tx.remove_network(&net)?;
    Ok(())
}

/// Creates or replaces a security group; a rule naming a group needs that group (or
/// itself).
pub(super) fn put_secgroup(
    tx: &mut Tx<'_>,
    g: &SecurityGroup,
) -> Result<SecurityGroup, StoreError> {
    for (i, r) in g.rules.iter().enumerate() {
        r.validate().map_err(|e| StoreError::Invalid {
            field: "rules",
            message: format!("rules[{i}].{}", e),
        })?;
        if let Remote::Group(other) = &r.remote {
            if other != &g.name && tx.secgroup(other)?.is_none() {
                return Err(StoreError::Invalid {
                    field: "rules",
                    message: format!("rules[{i}].remote: there is no security group {other}"),
                });
            }
        }
    }
    tx.put_secgroup(g)?;
    Ok(g.clone())
}

/// Deletes a security group no other group's rule names.
pub(super) fn delete_secgroup(tx: &mut Tx<'_>, name: &SecGroupName) -> Result<(), StoreError> {
    if tx.secgroup(name)?.is_none() {
        return Err(StoreError::NotFound {
            what: "security group",
            key: name.to_string(),
        });
    }
    if let Some(p) = tx
        .all_ports()?
        .into_iter()
        .find(|p| p.security_groups.contains(name))
    {
        return Err(StoreError::conflict(format!(
            "security group {name} is used by port {} ({}): take it off first",
            p.mac,
            owner_text(&p)
        )));
    }
    for g in tx.all_secgroups()? {
        if &g.name != name
            && g.rules
                .iter()
                .any(|r| matches!(&r.remote, Remote::Group(x) if x == name))
        {
            return Err(StoreError::conflict(format!(
                "security group {} has a rule that names {name}: change it first",
                g.name
            )));
        }
    }
    tx.remove_secgroup(name)?;
    Ok(())
}

fn owner_text(p: &Port) -> String {
    match &p.owner {
        PortOwner::Vm(vm) => format!("VM {vm}"),
        PortOwner::Host(h) => format!("{} on host {h}", p.mac),
    }
}

fn invalid(field: &'static str, message: String) -> StoreError {
    StoreError::Invalid { field, message }
}

/// Checks that every group exists.
fn known_groups(tx: &Tx<'_>, what: &str, groups: &[SecGroupName]) -> Result<(), StoreError> {
    for g in groups {
        if tx.secgroup(g)?.is_none() {
            return Err(invalid(
                "security_groups",
                format!("{what}: there is no security group {g}"),
            ));
        }
    }
    Ok(())
}

/// Records a port on `network` with `mac` (already checked free by the caller) and the
/// address asked for, or the lowest free one; `what` names the request's part in errors.
pub(super) fn new_port(
    tx: &mut Tx<'_>,
    what: &str,
    network: &NetworkName,
    mac: MacAddr,
    ip: Option<std::net::Ipv4Addr>,
    groups: &[SecGroupName],
    owner: PortOwner,
) -> Result<(Port, Network), StoreError> {
    let net = tx
        .network(network)?
        .ok_or_else(|| invalid("network", format!("{what}: there is no network {network}")))?;
    known_groups(tx, what, groups)?;
    let used: BTreeSet<std::net::Ipv4Addr> = tx
        .all_ports()?
        .into_iter()
        .filter(|p| &p.network == network)
        .map(|p| p.ip)
        .collect();
    let ip = match ip {
        Some(ip) if !is_host_address(&net.cidr, ip) => {
            return Err(invalid(
                "ip",
                format!(
                    "{what}: {ip} is not a host address of {network} ({})",
                    net.cidr
                ),
            ))
        }
        Some(ip) if ip == net.gateway => {
            return Err(invalid(
                "ip",
                format!("{what}: {ip} is the gateway of {network}"),
            ))
        }
        Some(ip) if used.contains(&ip) => {
            return Err(StoreError::conflict(format!(
                "{what}: {ip} is already used on network {network}"
            )))
        }
        Some(ip) => ip,
        None => allocate(&net, &used).ok_or_else(|| {
            StoreError::conflict(format!(
                "network {network} ({}) has no free address left",
                net.cidr
            ))
        })?,
    };
    let port = Port {
        network: network.clone(),
        mac,
        ip,
        security_groups: groups.to_vec(),
        owner,
        device: port_device(&mac),
    };
    tx.put_port(&port)?;
    Ok((port, net))
}

/// A port that is no VM's NIC, wired by `host`'s agent.
pub(super) fn create_port(tx: &mut Tx<'_>, req: &CreatePort) -> Result<Port, StoreError> {
    if tx.find_machine(req.host)?.is_none() {
        return Err(invalid("host", format!("there is no machine {}", req.host)));
    }
    let mac = match req.mac {
        Some(m) => {
            if let Some(p) = tx.port(m)? {
                return Err(StoreError::conflict(format!(
                    "MAC {m} is already port {}",
                    owner_text(&p)
                )));
            }
            if let Some(vm) = tx.vm_with_mac(m)? {
                return Err(StoreError::conflict(format!(
                    "MAC {m} is already a NIC of VM {vm}"
                )));
            }
            m
        }
        None => super::vms::fresh_mac(tx)?,
    };
    let (port, _) = new_port(
        tx,
        "port",
        &req.network,
        mac,
        req.ip,
        &req.security_groups,
        PortOwner::Host(req.host),
    )?;
    Ok(port)
}

/// Deletes a host-owned port; a VM's port goes with its VM.
pub(super) fn delete_port(tx: &mut Tx<'_>, mac: MacAddr) -> Result<(), StoreError> {
    let p = tx.port(mac)?.ok_or_else(|| StoreError::NotFound {
        what: "port",
        key: mac.to_string(),
    })?;
    if let PortOwner::Vm(vm) = &p.owner {
        return Err(StoreError::conflict(format!(
            "port {mac} is a NIC of VM {vm}: it goes when the VM is deleted"
        )));
    }
    tx.remove_port(mac)?;
    Ok(())
}

/// Replaces a port's security groups.
pub(super) fn set_port_groups(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    groups: &[SecGroupName],
) -> Result<Port, StoreError> {
    let mut p = tx.port(mac)?.ok_or_else(|| StoreError::NotFound {
        what: "port",
        key: mac.to_string(),
    })?;
    known_groups(tx, "security_groups", groups)?;
    p.security_groups = groups.to_vec();
    tx.put_port(&p)?;
    Ok(p)
}

/// Puts what a host's network reconcile did on its timeline (skipped for a machine that is
/// gone).
pub(super) fn network_notes(
    tx: &mut Tx<'_>,
    host: MacAddr,
    lines: &[String],
) -> Result<super::Outcome, StoreError> {
    if tx.find_machine(host)?.is_none() {
        return Ok(super::Outcome::Done);
    }
    for line in lines {
        tx.event(
            host,
            cosm_wire::EventKind::Network,
            line.clone(),
            None,
            None,
        )?;
    }
    Ok(super::Outcome::Done)
}

impl super::App {
    /// What `host`'s agent is told about tenant networks: the ports wired on it (its VMs',
    /// those of VMs migrating to it, and its own), their networks with the VXLAN endpoints
    /// of every other host that carries them, and the members of the groups their rules
    /// name.
    pub fn host_networks(&self, host: MacAddr) -> Result<HostNetworks, super::AppError> {
        use std::collections::{BTreeMap, HashMap};
        let ports = self.store.ports()?;
        if ports.is_empty() {
            return Ok(HostNetworks::default());
        }
        let vms: HashMap<VmName, Vm> = self
            .store
            .all_vms()?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let wired_on = |p: &Port| -> Vec<MacAddr> {
            match &p.owner {
                PortOwner::Host(h) => vec![*h],
                PortOwner::Vm(name) => crate::store::port_hosts(vms.get(name)),
            }
        };
        let networks: BTreeMap<NetworkName, Network> = self
            .store
            .networks()?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let groups: BTreeMap<SecGroupName, SecurityGroup> = self
            .store
            .secgroups()?
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect();
        let mut hosts_of: BTreeMap<NetworkName, BTreeSet<MacAddr>> = BTreeMap::new();
        let mut local = Vec::new();
        for p in &ports {
            let on = wired_on(p);
            hosts_of.entry(p.network.clone()).or_default().extend(&on);
            if on.contains(&host) {
                local.push(p);
            }
        }
        let mut out = HostNetworks::default();
        let mut named = BTreeSet::new();
        for p in &local {
            let Some(net) = networks.get(&p.network) else {
                continue;
            };
            if !out.networks.iter().any(|n| n.vni == net.vni) {
                let mut peers: Vec<std::net::Ipv4Addr> = hosts_of
                    .get(&net.name)
                    .into_iter()
                    .flatten()
                    .filter(|h| **h != host)
                    .filter_map(|h| self.hosts.vtep(*h))
                    .collect();
                peers.sort();
                peers.dedup();
                out.networks.push(HostNetwork {
                    name: net.name.clone(),
                    vni: net.vni,
                    cidr: net.cidr,
                    mtu: net.mtu,
                    peers,
                });
            }
            let rules: Vec<cosm_wire::SecRule> = p
                .security_groups
                .iter()
                .filter_map(|g| groups.get(g))
                .flat_map(|g| g.rules.iter().cloned())
                .collect();
            for r in &rules {
                if let Remote::Group(g) = &r.remote {
                    named.insert(g.clone());
                }
            }
            out.ports.push(HostPort {
                vni: net.vni,
                device: p.device.clone(),
                mac: p.mac,
                ip: p.ip,
                secured: !p.security_groups.is_empty(),
                rules,
            });
        }
        for g in named {
            let members = ports
                .iter()
                .filter(|p| p.security_groups.contains(&g))
                .filter_map(|p| networks.get(&p.network).map(|n| (n.vni, p.ip)))
                .collect();
            out.groups.push(GroupMembers { name: g, members });
        }
        out.networks.sort_by_key(|n| n.vni);
        Ok(out)
    }

    /// Holds back a live migration of a VM with tenant-network ports until the destination
    /// reports those networks up (libvirt there would refuse a tap on a missing bridge).
    pub(super) fn hold_migrations(
        &self,
        vms: &mut [cosm_wire::DesiredVm],
    ) -> Result<(), super::AppError> {
        for vm in vms.iter_mut() {
            let mut vnis = Vec::new();
            for name in vm.nics.iter().filter_map(|n| n.network.as_ref()) {
                if let Some(net) = self.store.network(name)? {
                    vnis.push(net.vni);
                }
            }
            if vnis.is_empty() {
                continue;
            }
            vm.ops.retain(|op| match &op.kind {
                cosm_wire::VmOpKind::Migrate { to, .. } => {
                    let ready = vnis.iter().all(|v| self.hosts.net_ready(*to, *v));
                    if !ready {
                        tracing::debug!(vm = %vm.name, %to, "migration held until the destination reports its networks up");
                    }
                    ready
                }
                _ => true,
            });
        }
        Ok(())
    }
}
