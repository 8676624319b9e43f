//! Tenant networks (issue 14, started): the model the appliance will keep and host agents
//! will reconcile — networks (VNI, IPv4 subnet, gateway, MTU), ports with addresses from the
//! network's IPAM, and security groups. Only the model, its validation and IPAM exist so
//! far; see the issue-14 section of the session note for what is missing.

use crate::{MacAddr, NetworkName, SecGroupName, VmName};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// VXLAN adds 50 bytes (outer Ethernet, IPv4, UDP, VXLAN) to every frame: on a 1500-byte
/// data network a tenant network carries at most 1450.
pub const VXLAN_OVERHEAD: u16 = 50;
/// The default MTU of a tenant network: a 1500-byte data network minus VXLAN.
pub const DEFAULT_MTU: u16 = 1500 - VXLAN_OVERHEAD;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Body of `POST /api/v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: NetworkName,
    /// `10.20.0.0/24`: the network's own address and a prefix of 8 to 29 bits.
    pub cidr: String,
    /// Chosen by the appliance (the lowest free one) when absent.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The first host address when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "10.20.0.1")]
    pub gateway: Option<Ipv4Addr>,
    /// `DEFAULT_MTU` (1450) when absent; 576..=8950.
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// A tenant network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: NetworkName,
    pub vni: u32,
    #[schema(value_type = String, example = "10.20.0.0/24")]
    pub cidr: Ipv4Net,
    #[schema(value_type = String, example = "10.20.0.1")]
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

/// Why a network, port or rule is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct NetError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: String) -> NetError {
    NetError { field, message }
}

impl CreateNetwork {
    /// The network this asks for, with `vni` when none was asked; refuses a subnet that is
    /// not a network address, a gateway outside its hosts, a VNI or MTU out of range.
    pub fn validate(&self, vni: u32) -> Result<Network, NetError> {
        let cidr: Ipv4Net = self.cidr.parse().map_err(|_| {
            bad(
                "cidr",
                format!("{:?} is not an IPv4 subnet like 10.20.0.0/24", self.cidr),
            )
        })?;
        if !(8..=29).contains(&cidr.prefix_len()) {
            return Err(bad(
                "cidr",
                format!("prefix /{} is outside /8../29", cidr.prefix_len()),
            ));
        }
        if cidr.addr() != cidr.network() {
            return Err(bad(
                "cidr",
                format!(
                    "{} is not a network address: did you mean {}?",
                    self.cidr,
                    cidr.trunc()
                ),
            ));
        }
        let vni = self.vni.unwrap_or(vni);
        if !(1..=MAX_VNI).contains(&vni) {
            return Err(bad("vni", format!("{vni} is outside 1..={MAX_VNI}")));
        }
        let first = u32::from(cidr.network()) + 1;
        let gateway = self.gateway.unwrap_or(Ipv4Addr::from(first));
        if !is_host_address(&cidr, gateway) {
            return Err(bad(
                "gateway",
                format!("{gateway} is not a host address of {cidr}"),
            ));
        }
        let mtu = self.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=9000 - VXLAN_OVERHEAD).contains(&mtu) {
            return Err(bad(
                "mtu",
                format!(
                    "{mtu} is outside 576..={} (VXLAN takes {VXLAN_OVERHEAD} bytes of a 9000-byte data network)",
                    9000 - VXLAN_OVERHEAD
                ),
            ));
        }
        Ok(Network {
            name: self.name.clone(),
            vni,
            cidr,
            gateway,
            mtu,
        })
    }
}

/// Whether `ip` is one of the subnet's host addresses (not its network or broadcast).
pub fn is_host_address(cidr: &Ipv4Net, ip: Ipv4Addr) -> bool {
    cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast()
}

/// IPAM: the lowest host address of the network that is neither its gateway nor `used`.
pub fn allocate(net: &Network, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    net.cidr
        .hosts()
        .find(|ip| *ip != net.gateway && !used.contains(ip))
}

/// The lowest VNI that no network in `taken` uses.
pub fn free_vni(taken: &BTreeSet<u32>) -> Option<u32> {
    (1..=MAX_VNI).find(|v| !taken.contains(v))
}

/// The bridge of network `vni` on every host.
pub fn bridge_name(vni: u32) -> String {
    format!("cbr{vni}")
}

/// The VXLAN device of network `vni` on every host.
pub fn vxlan_name(vni: u32) -> String {
    format!("cvx{vni}")
}

/// The host-side device of the port with this MAC: `cp` and the MAC's 12 hex digits
/// (14 bytes, inside Linux's 15).
pub fn port_device(mac: &MacAddr) -> String {
    let hex: String = mac.to_string().split(':').collect();
    format!("cp{hex}")
}

/// Whose a port is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortOwner {
    /// A VM's NIC: the port is wherever the VM runs, and goes with it.
    Vm(VmName),
    /// An interface an operator plugs in on this host by hand (named `port_device(mac)`):
    /// a bare-metal service, a router, or a test's network namespace.
    Host(MacAddr),
}

/// A port: a MAC and an address on a tenant network, with its security groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Port {
    pub network: NetworkName,
    pub mac: MacAddr,
    #[schema(value_type = String, example = "10.20.0.2")]
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub security_groups: Vec<SecGroupName>,
    pub owner: PortOwner,
    /// The host device: `port_device(mac)`.
    pub device: String,
}

/// Body of `POST /api/v1/ports`: a port that is not a VM's NIC, on `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePort {
    pub network: NetworkName,
    /// The machine (a hypervisor host) whose agent wires the port.
    pub host: MacAddr,
    /// Picked by the appliance (52:54:00 prefix) when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The lowest free address of the network when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub security_groups: Vec<SecGroupName>,
}

/// Body of `PUT /api/v1/ports/{mac}/security-groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPortGroups {
    pub security_groups: Vec<SecGroupName>,
}

/// What a host's agent is told to make (in `DesiredState::networks`): only the networks of
/// the ports it carries, each with the other hosts that carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostNetworks {
    pub networks: Vec<HostNetwork>,
    pub ports: Vec<HostPort>,
    /// The members of every security group a port's rule names as its remote.
    #[serde(default)]
    pub groups: Vec<GroupMembers>,
}

/// One network on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostNetwork {
    pub name: NetworkName,
    pub vni: u32,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
    pub mtu: u16,
    /// The VXLAN endpoints of the other hosts with a port on this network: one all-zero FDB
    /// entry each (head-end replication of broadcast and unknown unicast).
    #[schema(value_type = Vec<String>)]
    pub peers: Vec<Ipv4Addr>,
}

/// One port on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostPort {
    pub vni: u32,
    /// `port_device(mac)`.
    pub device: String,
    pub mac: MacAddr,
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// False when the port has no security group: all traffic passes (anti-spoofing still
    /// applies). True: only what `rules` allow, plus replies of allowed connections.
    pub secured: bool,
    /// The rules of all the port's groups together.
    #[serde(default)]
    pub rules: Vec<SecRule>,
}

/// The ports of a security group, as (network VNI, address) pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupMembers {
    pub name: SecGroupName,
    #[schema(value_type = Vec<(u32, String)>)]
    pub members: Vec<(u32, Ipv4Addr)>,
}

/// What an agent's network reconcile did since its last report: each change (creations and
/// repairs of drift) goes on the host's timeline, and so does an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetReport {
    #[serde(default)]
    pub changes: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The VNIs whose bridge and VXLAN device are up after the last pass: a live migration
    /// to this host of a VM on one of them waits until it is listed.
    #[serde(default)]
    pub ready: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// Whom a rule allows: an address range, or the ports of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    #[schema(value_type = String)]
    Cidr(Ipv4Net),
    Group(SecGroupName),
}

/// One allow rule of a security group (everything not allowed is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecRule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// `[first, last]`, TCP and UDP only; all ports when absent.
    #[serde(default)]
    pub ports: Option<(u16, u16)>,
    pub remote: Remote,
}

impl SecRule {
    pub fn validate(&self) -> Result<(), NetError> {
        match (self.protocol, self.ports) {
            (Protocol::Tcp | Protocol::Udp, Some((lo, hi))) if lo == 0 || lo > hi => Err(bad(
                "ports",
                format!("[{lo}, {hi}] is not a port range: 1 ≤ first ≤ last"),
            )),
            (Protocol::Icmp | Protocol::Any, Some(_)) => {
                Err(bad("ports", "ports only go with tcp or udp".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A security group: its allow rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: SecGroupName,
    pub rules: Vec<SecRule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(cidr: &str) -> CreateNetwork {
        CreateNetwork {
            name: "t".parse().unwrap(),
            cidr: cidr.into(),
            vni: None,
            gateway: None,
            mtu: None,
        }
    }

    #[test]
    fn a_network_gets_its_defaults_and_bad_ones_name_the_field() {
        let n = create("10.20.0.0/24").validate(7).unwrap();
        assert_eq!(
            (n.vni, n.gateway, n.mtu),
            (7, Ipv4Addr::new(10, 20, 0, 1), 1450)
        );
        let e = create("10.20.0.5/24").validate(7).unwrap_err();
        assert_eq!(e.field, "cidr");
        assert!(e.message.contains("10.20.0.0/24"), "{e}");
        assert_eq!(
            create("10.20.0.0/31").validate(7).unwrap_err().field,
            "cidr"
        );
        assert_eq!(create("nope").validate(7).unwrap_err().field, "cidr");
        let mut c = create("10.20.0.0/24");
        c.gateway = Some(Ipv4Addr::new(10, 20, 0, 255));
        assert_eq!(c.validate(7).unwrap_err().field, "gateway");
        c.gateway = Some(Ipv4Addr::new(10, 21, 0, 1));
        assert_eq!(c.validate(7).unwrap_err().field, "gateway");
        assert_eq!(create("10.20.0.0/24").validate(0).unwrap_err().field, "vni");
        assert_eq!(
            create("10.20.0.0/24")
                .validate(MAX_VNI + 1)
                .unwrap_err()
                .field,
            "vni"
        );
        let mut c = create("10.20.0.0/24");
        c.mtu = Some(9000);
        assert_eq!(c.validate(7).unwrap_err().field, "mtu");
    }

    #[test]
    fn ipam_skips_the_gateway_and_used_addresses_and_runs_out() {
        let n = create("192.0.2.0/29").validate(1).unwrap();
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(ip) = allocate(&n, &used) {
            used.insert(ip);
            got.push(ip.octets()[3]);
        }
        // .0 network, .1 gateway, .7 broadcast: 2..=6 are handed out, lowest first.
        assert_eq!(got, [2, 3, 4, 5, 6]);
        used.remove(&Ipv4Addr::new(192, 0, 2, 4));
        assert_eq!(allocate(&n, &used), Some(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(free_vni(&[1, 2, 4].into_iter().collect()), Some(3));
    }

    #[test]
    fn device_names_fit_linux_interface_names() {
        assert_eq!(bridge_name(MAX_VNI), "cbr16777215");
        assert_eq!(vxlan_name(7), "cvx7");
        let mac: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(port_device(&mac), "cp525400abcdef");
        assert!(port_device(&mac).len() <= 15 && bridge_name(MAX_VNI).len() <= 15);
    }

    #[test]
    fn rules_check_their_ports() {
        let rule = |protocol, ports| SecRule {
            direction: Direction::Ingress,
            protocol,
            ports,
            remote: Remote::Cidr("0.0.0.0/0".parse().unwrap()),
        };
        assert!(rule(Protocol::Tcp, Some((22, 22))).validate().is_ok());
        assert!(rule(Protocol::Tcp, None).validate().is_ok());
        assert_eq!(
            rule(Protocol::Tcp, Some((80, 22)))
                .validate()
                .unwrap_err()
                .field,
            "ports"
        );
        assert_eq!(
            rule(Protocol::Icmp, Some((1, 1)))
                .validate()
                .unwrap_err()
                .field,
            "ports"
        );
        let json =
            r#"{"direction":"ingress","protocol":"tcp","ports":[22,22],"remote":{"group":"web"}}"#;
        let r: SecRule = serde_json::from_str(json).unwrap();
        assert_eq!(r.remote, Remote::Group("web".parse().unwrap()));
        assert!(serde_json::from_str::<SecRule>(
            r#"{"direction":"up","protocol":"tcp","remote":{"cidr":"10.0.0.0/8"}}"#
        )
        .is_err());
    }
}
