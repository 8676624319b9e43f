//! The command-line grammar of `cosmctl`: global flags and the top-level command tree. Each
//! command group's own subcommands live in its module (`machines`, `roles`, `rules`,
//! `tokens`).

use crate::leases::LeasesCmd;
use crate::machines::{EventsArgs, MachinesCmd};
use crate::roles::RolesCmd;
use crate::rules::RulesCmd;
use crate::tokens::TokensCmd;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

const LONG_ABOUT: &str = "\
Command-line client of the COSM bare-metal provisioning appliance: register machines, give
them roles, follow their lifecycle, power them through their BMCs, manage role rules and
API tokens, run virtual machines on the VM hosts, put them on tenant networks with security
groups, and follow host HA (alarms, evacuations).

Where the appliance is and how to authenticate, highest precedence first:
  1. the --url and --token flags;
  2. the COSM_URL and COSM_TOKEN environment variables;
  3. the config file (--config, COSMCTL_CONFIG, or $HOME/.config/cosm/cosmctl.toml), a TOML
     file with the optional keys `url`, `token` and `token_file`;
  4. for the URL only, http://127.0.0.1:8080.
On its first start the appliance writes an admin token to <data_dir>/admin.token.

Examples:
  cosmctl health
  cosmctl machines list --role host --state active
  cosmctl machines show 52:54:00:aa:bb:01
  cosmctl machines add 52:54:00:aa:bb:01 --role web --hostname web-01 --ip 10.0.0.21
  cosmctl machines set-role 52:54:00:aa:bb:01 storage
  cosmctl machines retire 52:54:00:aa:bb:01 --reason \"failed fan\"
  cosmctl events 52:54:00:aa:bb:01 --limit 20
  cosmctl rules add --role host --mac-prefix 52:54:00 --min-cpus 16
  cosmctl tokens add ci --scope read > ci.token
  cosmctl machines power-settings set 52:54:00:aa:bb:01 --driver ipmi --host 10.0.0.6 --username ADMIN --password-file bmc.pw
  cosmctl machines power cycle 52:54:00:aa:bb:01
  cosmctl alarms
  cosmctl hosts
  cosmctl vms create web-01 --vcpus 2 --memory 2G --disk image=debian-12.qcow2 --nic br0 --wait
  cosmctl vms migrate web-01 --wait
  cosmctl networks create tenant-a --cidr 198.51.100.0/24
  cosmctl secgroups set ssh --rule in:tcp:22:0.0.0.0/0 --rule out:any::0.0.0.0/0
  cosmctl vms create app-01 --vcpus 1 --memory 1G --disk blank=10G --nic network=tenant-a,group=ssh
  cosmctl ports list --network tenant-a
  cosmctl --json machines list | jq -r '.[].mac'

Config file example ($HOME/.config/cosm/cosmctl.toml):
  url = \"https://cosm.example.net:8080\"
  token_file = \"/etc/cosm/admin.token\"

Exit status: 0 on success, 1 when the appliance refuses a request or cannot be reached,
2 on a usage error.";

const HOSTS_ABOUT: &str = "\
List the VM hosts: machines of role `host`, deployed or active, whose agents report their
hypervisor. VCPUS and MEMORY are what its VMs are given / what the host has (the appliance
may overcommit vCPUs, see its [vms] config); a host that has never REPORTED gets no VMs.
MIGRATION-URI is where other hosts' libvirt reaches it for live migration. UNMANAGED lists
domains its libvirt has that COSM did not make; the agent leaves them alone.";

/// `cosmctl`: the command-line client of the COSM appliance.
#[derive(Debug, Parser)]
#[command(
    name = "cosmctl",
    version,
    about = "Command-line client of the COSM bare-metal provisioning appliance",
    long_about = LONG_ABOUT,
    propagate_version = true
)]
pub(crate) struct Cli {
    /// Base URL of the appliance [default: http://127.0.0.1:8080, or `url` in the config file]
    #[arg(
        long,
        env = "COSM_URL",
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub(crate) url: Option<String>,

    /// API token sent as `Authorization: Bearer` (or `token`/`token_file` in the config file)
    #[arg(
        long,
        env = "COSM_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    pub(crate) token: Option<String>,

    /// TOML config file with optional keys `url`, `token`, `token_file` [default:
    /// $HOME/.config/cosm/cosmctl.toml]
    #[arg(
        long,
        env = "COSMCTL_CONFIG",
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub(crate) config: Option<PathBuf>,

    /// Print the appliance's JSON answer, pretty-printed, instead of tables and messages
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List, show, register, change, power and remove machines
    #[command(subcommand, alias = "machine")]
    Machines(MachinesCmd),
    /// List, add and remove the roles machines can be given
    #[command(subcommand, alias = "role")]
    Roles(RolesCmd),
    /// List, add and remove the rules that give discovered machines a role
    #[command(subcommand, alias = "rule")]
    Rules(RulesCmd),
    /// Show a machine's event timeline, oldest first
    Events(EventsArgs),
    /// Show the DHCP lease table
    #[command(subcommand, alias = "lease")]
    Leases(LeasesCmd),
    /// List, create and revoke API tokens
    #[command(subcommand, alias = "token")]
    Tokens(TokensCmd),
    /// Upload, list and delete install media in the image repository
    #[command(subcommand, alias = "image")]
    Images(crate::images::ImagesCmd),
    /// List, create, power, migrate, snapshot and delete virtual machines
    #[command(subcommand, alias = "vm", long_about = crate::vms::VMS_ABOUT)]
    Vms(crate::vms::VmsCmd),
    /// List the VM hosts: capacity, what their VMs take, unmanaged domains
    #[command(alias = "host", long_about = HOSTS_ABOUT)]
    Hosts,
    /// List, create and delete tenant networks (VXLAN segments with an IPv4 subnet)
    #[command(subcommand, alias = "network", long_about = crate::networks::NETWORKS_ABOUT)]
    Networks(crate::networks::NetworksCmd),
    /// List, create and delete ports of tenant networks; set their security groups
    #[command(subcommand, alias = "port", long_about = crate::ports::PORTS_ABOUT)]
    Ports(crate::ports::PortsCmd),
    /// List, show, set and delete security groups (the allow rules of ports)
    #[command(subcommand, alias = "secgroup", long_about = crate::secgroups::SECGROUPS_ABOUT)]
    Secgroups(crate::secgroups::SecgroupsCmd),
    /// List the alarms host HA raised (active ones unless --all)
    #[command(alias = "alarm", long_about = crate::ha::ALARMS_ABOUT)]
    Alarms(crate::ha::AlarmsArgs),
    /// List the fenced hosts' evacuations: phase, fence time, where each VM went
    #[command(alias = "evacuation", long_about = crate::ha::EVACUATIONS_ABOUT)]
    Evacuations,
    /// Show the kickstart a machine's installer gets
    #[command(subcommand)]
    Kickstart(KickstartCmd),
    /// Check that the appliance is up and show its version (needs no token)
    Health,
}

/// Subcommands of `cosmctl kickstart`.
#[derive(Debug, Subcommand)]
pub(crate) enum KickstartCmd {
    /// Print the kickstart the machine gets now: its role's template for the configured
    /// release, with its network, disk and the appliance's settings filled in.
    Render {
        /// MAC address of the machine.
        mac: cosm_wire::MacAddr,
    },
}

impl Command {
    /// Whether the command calls the authenticated API (all but `health` do).
    pub(crate) fn needs_token(&self) -> bool {
        !matches!(self, Command::Health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "cosmctl",
            "machines",
            "list",
            "--json",
            "--url",
            "http://x:1",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.url.as_deref(), Some("http://x:1"));
    }
}
