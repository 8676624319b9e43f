//! `cosmctl ports …`: the ports of tenant networks — a MAC and an address each, owned by a
//! VM (its NIC on a network) or by a host (an interface an operator plugs in there) — and
//! the security groups of each.

use crate::api::add_hint;
use crate::output::{dash, kv_table, print, print_table, table, Ctx};
use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use cosm_wire::{CreatePort, MacAddr, NetworkName, Port, PortOwner, SecGroupName, SetPortGroups};
use reqwest::StatusCode;
use std::net::Ipv4Addr;

pub(crate) const PORTS_ABOUT: &str = "\
Ports of the tenant networks: a MAC and an address from the network's subnet each. A VM's
NIC on a network (`cosmctl vms create … --nic network=NAME`) is a port owned by the VM: it
follows the VM from host to host and goes when the VM goes. A host port (`ports create`) is
an interface on one host, named DEVICE, for a bare-metal service, a router or a test.

A port with security groups passes only what their rules allow; a port without any passes
everything. Either way it sends only from its own MAC and address.

Examples:
  cosmctl ports list --network tenant-a
  cosmctl ports create --network tenant-a --host 52:54:00:aa:bb:01 --group ssh
  cosmctl ports create --network tenant-a --host 52:54:00:aa:bb:01 --ip 198.51.100.10
  cosmctl ports set-groups 52:54:00:12:34:56 --group ssh --group web
  cosmctl ports set-groups 52:54:00:12:34:56 --no-groups
  cosmctl ports delete 52:54:00:12:34:56";

/// Subcommands of `cosmctl ports`.
#[derive(Debug, Subcommand)]
pub(crate) enum PortsCmd {
    /// List the ports, of all networks or of one.
    #[command(visible_alias = "ls")]
    List {
        /// Only the ports of this network.
        #[arg(long, value_name = "NAME")]
        network: Option<NetworkName>,
    },
    /// Show one port.
    Show {
        /// The port's MAC.
        mac: MacAddr,
    },
    /// Create a host port: an interface on a VM host with an address of the network.
    #[command(after_help = CREATE_AFTER)]
    Create(CreateArgs),
    /// Delete a host port (a VM's port goes with its VM).
    #[command(visible_alias = "rm")]
    Delete {
        /// The port's MAC.
        mac: MacAddr,
    },
    /// Replace the security groups of a port, a VM's or a host's.
    #[command(after_help = SET_GROUPS_AFTER)]
    SetGroups(SetGroupsArgs),
}

const CREATE_AFTER: &str = "\
The MAC is picked by the appliance (52:54:00 prefix) unless --mac is given; the address is
the lowest free one of the network unless --ip is given. The host's agent names the port's
device cp and the MAC's 12 hex digits (DEVICE in `ports show`).

Examples:
  cosmctl ports create --network tenant-a --host 52:54:00:aa:bb:01
  cosmctl ports create --network tenant-a --host 52:54:00:aa:bb:01 --ip 198.51.100.10 --group ssh
  cosmctl ports create --network tenant-a --host 52:54:00:aa:bb:01 --mac 52:54:00:12:34:56";

const SET_GROUPS_AFTER: &str = "\
The groups given replace the port's groups; they apply at once. --no-groups removes them
all, and then the port passes all traffic.

Examples:
  cosmctl ports set-groups 52:54:00:12:34:56 --group ssh --group web
  cosmctl ports set-groups 52:54:00:12:34:56 --no-groups";

/// Arguments of `cosmctl ports create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The network the port is on.
    #[arg(long, value_name = "NAME")]
    pub(crate) network: NetworkName,
    /// The VM host (its MAC; see `cosmctl hosts`) whose agent wires the port.
    #[arg(long, value_name = "MAC")]
    pub(crate) host: MacAddr,
    /// The port's MAC [default: picked by the appliance].
    #[arg(long, value_name = "MAC")]
    pub(crate) mac: Option<MacAddr>,
    /// The port's address, in the network's subnet [default: the lowest free one].
    #[arg(long, value_name = "IP")]
    pub(crate) ip: Option<Ipv4Addr>,
    /// A security group (repeatable); without any, the port passes all traffic.
    #[arg(long = "group", value_name = "GROUP")]
    pub(crate) groups: Vec<SecGroupName>,
}

impl CreateArgs {
    /// The `POST /api/v1/ports` body.
    pub(crate) fn to_request(&self) -> CreatePort {
        CreatePort {
            network: self.network.clone(),
            host: self.host,
            mac: self.mac,
            ip: self.ip,
            security_groups: self.groups.clone(),
        }
    }
}

/// Arguments of `cosmctl ports set-groups`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("groups_given").required(true).args(["groups", "no_groups"])))]
pub(crate) struct SetGroupsArgs {
    /// The port's MAC.
    pub(crate) mac: MacAddr,
    /// A security group; repeatable. The port gets exactly these.
    #[arg(long = "group", value_name = "GROUP")]
    pub(crate) groups: Vec<SecGroupName>,
    /// Remove all the port's groups: it passes all traffic.
    #[arg(long, conflicts_with = "groups")]
    pub(crate) no_groups: bool,
}

impl SetGroupsArgs {
    /// The `PUT /api/v1/ports/{mac}/security-groups` body.
    pub(crate) fn to_request(&self) -> SetPortGroups {
        SetPortGroups {
            security_groups: self.groups.clone(),
        }
    }
}

fn port_path(mac: &MacAddr) -> String {
    format!("/ports/{mac}")
}

/// `vm web-01` or `host 52:54:00:aa:bb:01`.
pub(crate) fn owner(o: &PortOwner) -> String {
    match o {
        PortOwner::Vm(name) => format!("vm {name}"),
        PortOwner::Host(mac) => format!("host {mac}"),
    }
}

fn groups(p: &Port) -> String {
    dash(Some(
        p.security_groups
            .iter()
            .map(|g| g.as_str())
            .collect::<Vec<_>>()
            .join(","),
    ))
}

pub(crate) fn ports_table(ports: &[Port]) -> comfy_table::Table {
    let mut t = table(&["MAC", "NETWORK", "IP", "OWNER", "DEVICE", "GROUPS"]);
    for p in ports {
        t.add_row(vec![
            p.mac.to_string(),
            p.network.to_string(),
            p.ip.to_string(),
            owner(&p.owner),
            p.device.clone(),
            groups(p),
        ]);
    }
    t
}

/// Rows of `ports show`.
pub(crate) fn details(p: &Port) -> Vec<(&'static str, String)> {
    let groups = if p.security_groups.is_empty() {
        "none: all traffic passes".to_string()
    } else {
        groups(p)
    };
    vec![
        ("MAC", p.mac.to_string()),
        ("NETWORK", p.network.to_string()),
        ("IP", p.ip.to_string()),
        ("OWNER", owner(&p.owner)),
        ("DEVICE", p.device.clone()),
        ("GROUPS", groups),
    ]
}

/// What to do about a refused `ports delete`: a VM's port goes with its VM.
fn delete_hint(status: StatusCode, mac: &MacAddr) -> Option<String> {
    (status == StatusCode::CONFLICT).then(|| {
        format!(
            "a VM's port goes when its VM is deleted; see whose it is with `cosmctl ports show {mac}`"
        )
    })
}

/// Runs a `cosmctl ports` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: PortsCmd) -> Result<()> {
    match cmd {
        PortsCmd::List { network } => {
            let query: Vec<(&str, String)> =
                network.iter().map(|n| ("network", n.to_string())).collect();
            let reply = ctx.api.get_all("/ports", &query)?;
            ctx.show(reply, |ports: Vec<Port>| {
                if ports.is_empty() {
                    match &network {
                        Some(n) => eprintln!("network {n} has no ports"),
                        None => eprintln!("no ports"),
                    }
                    return Ok(());
                }
                print_table(&ports_table(&ports))
            })
        }
        PortsCmd::Show { mac } => {
            let reply = ctx.api.get(&port_path(&mac), &[])?;
            ctx.show(reply, |p: Port| print_table(&kv_table(details(&p))))
        }
        PortsCmd::Create(args) => {
            let reply = ctx.api.post("/ports", &args.to_request())?;
            ctx.show(reply, |p: Port| {
                print(&format!(
                    "created port {} on network {}: address {}, device {} on {}",
                    p.mac,
                    p.network,
                    p.ip,
                    p.device,
                    owner(&p.owner)
                ))
            })
        }
        PortsCmd::Delete { mac } => {
            let reply = ctx
                .api
                .delete(&port_path(&mac))
                .map_err(|e| add_hint(e, |api| delete_hint(api.status, &mac)))?;
            ctx.done(reply, format!("deleted port {mac}"))
        }
        PortsCmd::SetGroups(args) => {
            let reply = ctx.api.put(
                &format!("{}/security-groups", port_path(&args.mac)),
                &args.to_request(),
            )?;
            ctx.show(reply, |p: Port| {
                print(&if p.security_groups.is_empty() {
                    format!("port {} has no security group: all traffic passes", p.mac)
                } else {
                    format!("port {} is in {}", p.mac, groups(&p))
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    const HOST: &str = "52:54:00:aa:bb:01";
    const MAC: &str = "52:54:00:12:34:56";

    fn parse(args: &[&str]) -> Result<PortsCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "ports"], args].concat())?;
        match cli.command {
            Command::Ports(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn create_builds_the_request() {
        let body = |args: &[&str]| match parse(&[&["create"], args].concat()).unwrap() {
            PortsCmd::Create(a) => serde_json::to_value(a.to_request()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            body(&["--network", "tenant-a", "--host", HOST]),
            serde_json::json!({
                "network": "tenant-a", "host": HOST, "mac": null, "ip": null,
                "security_groups": [],
            })
        );
        assert_eq!(
            body(&[
                "--network",
                "tenant-a",
                "--host",
                HOST,
                "--mac",
                MAC,
                "--ip",
                "198.51.100.10",
                "--group",
                "ssh",
                "--group",
                "web",
            ]),
            serde_json::json!({
                "network": "tenant-a", "host": HOST, "mac": MAC, "ip": "198.51.100.10",
                "security_groups": ["ssh", "web"],
            })
        );
    }

    #[test]
    fn set_groups_needs_groups_or_no_groups() {
        let body = |args: &[&str]| match parse(&[&["set-groups", MAC], args].concat()).unwrap() {
            PortsCmd::SetGroups(a) => serde_json::to_value(a.to_request()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            body(&["--group", "ssh", "--group", "web"]),
            serde_json::json!({"security_groups": ["ssh", "web"]})
        );
        assert_eq!(
            body(&["--no-groups"]),
            serde_json::json!({"security_groups": []})
        );
        // Opening a port to all traffic is never an accident of a missing flag.
        let e = parse(&["set-groups", MAC]).unwrap_err().to_string();
        assert!(e.contains("--group") && e.contains("--no-groups"), "{e}");
        let e = parse(&["set-groups", MAC, "--group", "ssh", "--no-groups"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag() {
        for (args, flag) in [
            (&["create", "--host", HOST][..], "--network"),
            (&["create", "--network", "t"][..], "--host"),
            (
                &["create", "--network", "t", "--host", "nope"][..],
                "--host",
            ),
            (
                &[
                    "create",
                    "--network",
                    "t",
                    "--host",
                    HOST,
                    "--ip",
                    "10.0.0.300",
                ][..],
                "--ip",
            ),
            (
                &["create", "--network", "t", "--host", HOST, "--group", "a b"][..],
                "--group",
            ),
            (&["list", "--network", "a/b"][..], "--network"),
            (&["show", "xx"][..], "MAC"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    fn port(mac: &str, owner: PortOwner, groups: &[&str]) -> Port {
        let mac: MacAddr = mac.parse().unwrap();
        Port {
            network: "tenant-a".parse().unwrap(),
            mac,
            ip: "198.51.100.2".parse().unwrap(),
            security_groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            owner,
            device: cosm_wire::port_device(&mac),
        }
    }

    #[test]
    fn list_and_show_render() {
        let ports = [
            port(
                MAC,
                PortOwner::Vm("web-01".parse().unwrap()),
                &["ssh", "web"],
            ),
            port(
                "52:54:00:12:34:57",
                PortOwner::Host(HOST.parse().unwrap()),
                &[],
            ),
        ];
        let text = ports_table(&ports).to_string();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["MAC", "NETWORK", "IP", "OWNER", "DEVICE", "GROUPS"],
                vec![
                    MAC,
                    "tenant-a",
                    "198.51.100.2",
                    "vm",
                    "web-01",
                    "cp525400123456",
                    "ssh,web"
                ],
                vec![
                    "52:54:00:12:34:57",
                    "tenant-a",
                    "198.51.100.2",
                    "host",
                    HOST,
                    "cp525400123457",
                    "-"
                ],
            ]
        );
        let text = kv_table(details(&ports[1])).to_string();
        assert!(text.contains("none: all traffic passes"), "{text}");
        assert!(text.contains(&format!("host {HOST}")), "{text}");
    }

    #[test]
    fn a_refused_delete_explains_vm_ports() {
        let mac: MacAddr = MAC.parse().unwrap();
        assert!(delete_hint(StatusCode::CONFLICT, &mac)
            .unwrap()
            .contains("goes when its VM is deleted"));
        assert_eq!(delete_hint(StatusCode::NOT_FOUND, &mac), None);
    }
}
