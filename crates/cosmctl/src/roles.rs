//! `cosmctl roles …`: the roles machines can be given.

use crate::output::{dash, print, print_table, table, time, Ctx};
use anyhow::Result;
use clap::Subcommand;
use cosm_wire::{Role, RoleName, RoleSpec};

/// Subcommands of `cosmctl roles`.
#[derive(Debug, Subcommand)]
pub(crate) enum RolesCmd {
    /// List the roles, built-in ones included.
    #[command(visible_alias = "ls")]
    List,
    /// Define a new role.
    #[command(
        after_help = "Example:\n  cosmctl roles add gpu-host --description \"hosts with GPUs\""
    )]
    Add {
        /// Name of the role: 1-32 lowercase letters, digits and '-', starting with a letter.
        name: RoleName,
        /// What machines with this role are for.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Set how a role's machines are installed: `image` (a role image from the repository,
    /// streamed onto the disk by the agent ramdisk), `kickstart` (the distribution's
    /// installer; needs a mirror), or `auto` (image when the repository has one for the
    /// role, else kickstart; the default).
    #[command(after_help = "Example:\n  cosmctl roles set-install host image")]
    SetInstall {
        /// Name of the role.
        name: RoleName,
        /// image, kickstart or auto.
        #[arg(value_parser = ["image", "kickstart", "auto"])]
        method: String,
    },
    /// Delete a role. Built-in roles (center, web, host, storage) cannot be deleted.
    #[command(visible_alias = "delete")]
    Rm {
        /// Name of the role.
        name: RoleName,
    },
}

/// Runs a `cosmctl roles` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: RolesCmd) -> Result<()> {
    match cmd {
        RolesCmd::List => {
            let reply = ctx.api.get_all("/roles", &[])?;
            ctx.show(reply, |roles: Vec<Role>| {
                let mut t = table(&["NAME", "BUILTIN", "INSTALL", "DESCRIPTION", "CREATED"]);
                for r in &roles {
                    t.add_row(vec![
                        r.name.to_string(),
                        if r.builtin { "yes" } else { "no" }.to_string(),
                        r.install.map_or("auto".to_string(), |m| m.to_string()),
                        dash(Some(&r.description)),
                        time(r.created_at),
                    ]);
                }
                print_table(&t)
            })
        }
        RolesCmd::Add { name, description } => {
            let spec = RoleSpec {
                name,
                description: description.unwrap_or_default(),
            };
            let reply = ctx.api.post("/roles", &spec)?;
            ctx.show(reply, |r: Role| print(&format!("created role {}", r.name)))
        }
        RolesCmd::SetInstall { name, method } => {
            let method = match method.as_str() {
                "auto" => None,
                m => Some(
                    m.parse::<cosm_wire::InstallMethod>()
                        .map_err(anyhow::Error::msg)?,
                ),
            };
            let body = cosm_wire::SetInstallMethod { method };
            let reply = ctx.api.put(&format!("/roles/{name}/install"), &body)?;
            ctx.show(reply, |r: Role| {
                print(&format!(
                    "role {} is installed by {}",
                    r.name,
                    r.install
                        .map_or("image when one exists, else kickstart".to_string(), |m| m
                            .to_string())
                ))
            })
        }
        RolesCmd::Rm { name } => {
            let reply = ctx.api.delete(&format!("/roles/{name}"))?;
            ctx.done(reply, format!("deleted role {name}"))
        }
    }
}
