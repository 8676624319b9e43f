//! `cosmctl networks …`: tenant networks, VXLAN segments with an IPv4 subnet whose
//! addresses the appliance hands to ports. A new network is checked here as the appliance
//! would check it, so a mistake names the flag before any request is sent.

use crate::api::add_hint;
use crate::output::{kv_table, print, print_table, table, Ctx};
use crate::UsageError;
use anyhow::Result;
use clap::{Args, Subcommand};
use cosm_wire::{
    bridge_name, vxlan_name, CreateNetwork, Network, NetworkName, MAX_VNI, VXLAN_OVERHEAD,
};
use reqwest::StatusCode;
use std::net::Ipv4Addr;

pub(crate) const NETWORKS_ABOUT: &str = "\
Tenant networks: each is a VXLAN segment (its VNI) carrying an IPv4 subnet between the VM
hosts. The appliance hands out the subnet's addresses to ports (VM NICs created with
`--nic network=NAME`, and host ports of `cosmctl ports create`), the lowest free one first;
the gateway address is never handed out. On every host that carries a port of the network,
its agent makes a bridge cbrVNI and a VXLAN device cvxVNI.

Examples:
  cosmctl networks create tenant-a --cidr 198.51.100.0/24
  cosmctl networks create tenant-b --cidr 10.20.0.0/16 --vni 4242 --gateway 10.20.0.254 --mtu 1400
  cosmctl networks list
  cosmctl vms create web-01 --vcpus 2 --memory 2G --disk blank=10G --nic network=tenant-a
  cosmctl ports list --network tenant-a
  cosmctl networks delete tenant-b";

/// Subcommands of `cosmctl networks`.
#[derive(Debug, Subcommand)]
pub(crate) enum NetworksCmd {
    /// List the tenant networks.
    #[command(visible_alias = "ls")]
    List,
    /// Show one network, with the devices its hosts make for it.
    Show {
        /// The network's name.
        name: NetworkName,
    },
    /// Create a tenant network.
    #[command(after_help = CREATE_AFTER)]
    Create(CreateArgs),
    /// Delete a network; refused while it has ports.
    #[command(visible_alias = "rm")]
    Delete {
        /// The network's name.
        name: NetworkName,
    },
}

const CREATE_AFTER: &str = "\
The VNI is the lowest free one unless --vni is given; the gateway is the subnet's first
host address unless --gateway is given; the MTU is 1450 (a 1500-byte data network minus the
50 bytes VXLAN adds) unless --mtu is given.

Examples:
  cosmctl networks create tenant-a --cidr 198.51.100.0/24
  cosmctl networks create tenant-b --cidr 10.20.0.0/16 --vni 4242 --gateway 10.20.0.254 --mtu 1400";

/// Arguments of `cosmctl networks create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The network's name: letters, digits, '.', '_', '-' (at most 32).
    pub(crate) name: NetworkName,
    /// The IPv4 subnet, its network address and a prefix of /8 to /29, e.g. 198.51.100.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) cidr: String,
    /// The VXLAN network identifier, 1-16777215 [default: the lowest free one].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VNI)))]
    pub(crate) vni: Option<u32>,
    /// The gateway address, one of the subnet's hosts [default: the first, e.g. .1].
    #[arg(long, value_name = "IP")]
    pub(crate) gateway: Option<Ipv4Addr>,
    /// The MTU of the network's ports, 576-8950 [default: 1450].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(576..=i64::from(9000 - VXLAN_OVERHEAD)))]
    pub(crate) mtu: Option<u16>,
}

/// `--cidr`, checked alone as the appliance checks it (so that clap refuses it before
/// anything else happens); whether --gateway fits it is checked in
/// [`CreateArgs::to_request`].
fn parse_cidr(text: &str) -> Result<String, String> {
    let alone = CreateNetwork {
        name: NetworkName::new("x").expect("a valid name"),
        cidr: text.trim().to_string(),
        vni: None,
        gateway: None,
        mtu: None,
    };
    alone.validate(1).map_err(|e| e.message)?;
    Ok(alone.cidr)
}

impl CreateArgs {
    /// The `POST /api/v1/networks` body, checked as the appliance checks it; a mistake is a
    /// [`UsageError`] naming the flag.
    pub(crate) fn to_request(&self) -> Result<CreateNetwork, UsageError> {
        let req = CreateNetwork {
            name: self.name.clone(),
            cidr: self.cidr.clone(),
            vni: self.vni,
            gateway: self.gateway,
            mtu: self.mtu,
        };
        // Any VNI will do for the check when the appliance picks it.
        req.validate(self.vni.unwrap_or(1))
            .map_err(|e| UsageError(format!("--{}: {}", e.field, e.message)))?;
        Ok(req)
    }
}

fn network_path(name: &NetworkName) -> String {
    format!("/networks/{name}")
}

pub(crate) fn networks_table(nets: &[Network]) -> comfy_table::Table {
    let mut t = table(&["NAME", "VNI", "CIDR", "GATEWAY", "MTU"]);
    for n in nets {
        t.add_row(vec![
            n.name.to_string(),
            n.vni.to_string(),
            n.cidr.to_string(),
            n.gateway.to_string(),
            n.mtu.to_string(),
        ]);
    }
    t
}

/// Rows of `networks show`.
pub(crate) fn details(n: &Network) -> Vec<(&'static str, String)> {
    vec![
        ("NAME", n.name.to_string()),
        ("VNI", n.vni.to_string()),
        ("CIDR", n.cidr.to_string()),
        ("GATEWAY", n.gateway.to_string()),
        ("MTU", n.mtu.to_string()),
        (
            "DEVICES",
            format!(
                "bridge {} and VXLAN {} on each host with a port on it",
                bridge_name(n.vni),
                vxlan_name(n.vni)
            ),
        ),
    ]
}

/// Runs a `cosmctl networks` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: NetworksCmd) -> Result<()> {
    match cmd {
        NetworksCmd::List => {
            let reply = ctx.api.get_all("/networks", &[])?;
            ctx.show(reply, |nets: Vec<Network>| {
                if nets.is_empty() {
                    eprintln!(
                        "no networks: create one with `cosmctl networks create NAME --cidr CIDR`"
                    );
                    return Ok(());
                }
                print_table(&networks_table(&nets))
            })
        }
        NetworksCmd::Show { name } => {
            let reply = ctx.api.get(&network_path(&name), &[])?;
            ctx.show(reply, |n: Network| print_table(&kv_table(details(&n))))
        }
        NetworksCmd::Create(args) => {
            let body = args.to_request()?;
            let reply = ctx.api.post("/networks", &body)?;
            ctx.show(reply, |n: Network| {
                print(&format!(
                    "created network {}: VNI {}, {} with gateway {}, MTU {}",
                    n.name, n.vni, n.cidr, n.gateway, n.mtu
                ))
            })
        }
        NetworksCmd::Delete { name } => {
            let reply = ctx.api.delete(&network_path(&name)).map_err(|e| {
                add_hint(e, |api| {
                    (api.status == StatusCode::CONFLICT).then(|| {
                        format!(
                            "see its ports with `cosmctl ports list --network {name}`; a host port goes \
                             with `cosmctl ports delete MAC`, a VM's port with its VM"
                        )
                    })
                })
            })?;
            ctx.done(reply, format!("deleted network {name}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<NetworksCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "networks"], args].concat())?;
        match cli.command {
            Command::Networks(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create(args: &[&str]) -> Result<CreateNetwork, UsageError> {
        match parse(&[&["create"], args].concat()).unwrap() {
            NetworksCmd::Create(a) => a.to_request(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_builds_the_request() {
        assert_eq!(
            serde_json::to_value(create(&["tenant-a", "--cidr", "198.51.100.0/24"]).unwrap())
                .unwrap(),
            serde_json::json!({
                "name": "tenant-a", "cidr": "198.51.100.0/24",
                "vni": null, "gateway": null, "mtu": null,
            })
        );
        assert_eq!(
            serde_json::to_value(
                create(&[
                    "tenant-b",
                    "--cidr",
                    "10.20.0.0/16",
                    "--vni",
                    "4242",
                    "--gateway",
                    "10.20.0.254",
                    "--mtu",
                    "1400",
                ])
                .unwrap()
            )
            .unwrap(),
            serde_json::json!({
                "name": "tenant-b", "cidr": "10.20.0.0/16",
                "vni": 4242, "gateway": "10.20.0.254", "mtu": 1400,
            })
        );
    }

    #[test]
    fn bad_networks_are_refused_naming_the_flag() {
        // What only the whole request shows: the gateway outside the subnet.
        for gw in ["10.0.1.1", "10.0.0.255", "10.0.0.0"] {
            let e = create(&["t", "--cidr", "10.0.0.0/24", "--gateway", gw])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--gateway: "), "{gw}: {e}");
        }
        // The rest clap refuses, naming the flag, before a token is even looked for.
        for (args, flag, why) in [
            (
                &["create", "t", "--cidr", "198.51.100.7/24"][..],
                "--cidr",
                "did you mean 198.51.100.0/24?",
            ),
            (
                &["create", "t", "--cidr", "10.0.0.0/30"][..],
                "--cidr",
                "/30",
            ),
            (
                &["create", "t", "--cidr", "nope"][..],
                "--cidr",
                "10.20.0.0/24",
            ),
            (
                &["create", "t", "--cidr", "10.0.0.0/24", "--mtu", "9000"][..],
                "--mtu",
                "9000",
            ),
            (
                &["create", "t", "--cidr", "10.0.0.0/24", "--vni", "0"][..],
                "--vni",
                "0",
            ),
            (
                &["create", "t", "--cidr", "10.0.0.0/24", "--vni", "16777216"][..],
                "--vni",
                "16777216",
            ),
            (
                &["create", "t", "--cidr", "10.0.0.0/24", "--gateway", "::1"][..],
                "--gateway",
                "::1",
            ),
            (&["create", "t"][..], "--cidr", "required"),
            (
                &["create", "a/b", "--cidr", "10.0.0.0/24"][..],
                "NAME",
                "a/b",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(why), "{args:?}: {e}");
        }
    }

    fn net(name: &str, vni: u32, cidr: &str, gw: &str) -> Network {
        Network {
            name: name.parse().unwrap(),
            vni,
            cidr: cidr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            mtu: 1450,
        }
    }

    #[test]
    fn list_and_show_render() {
        let text = networks_table(&[
            net("tenant-a", 1, "198.51.100.0/24", "198.51.100.1"),
            net("tenant-b", 4242, "10.20.0.0/16", "10.20.0.254"),
        ])
        .to_string();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["NAME", "VNI", "CIDR", "GATEWAY", "MTU"],
                vec!["tenant-a", "1", "198.51.100.0/24", "198.51.100.1", "1450"],
                vec!["tenant-b", "4242", "10.20.0.0/16", "10.20.0.254", "1450"],
            ]
        );
        let text = kv_table(details(&net("t", 7, "10.0.0.0/24", "10.0.0.1"))).to_string();
        assert!(text.contains("bridge cbr7 and VXLAN cvx7"), "{text}");
    }
}
