//! `cosmctl`, the command-line client of the COSM appliance's REST API.
//!
//! This file parses the command line, works out the URL and token (see [`config`]),
//! dispatches to the command modules and turns errors into exit codes: 1 for errors from
//! or about the appliance, 2 for usage errors (clap's own, and [`UsageError`]s found later).

mod api;
mod cli;
mod config;
mod ha;
mod images;
mod leases;
mod machines;
mod networks;
mod output;
mod ports;
mod power;
mod roles;
mod rules;
mod secgroups;
mod secrule_syntax;
mod tokens;
mod vm_spec;
mod vm_wait;
mod vms;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use output::{print, Ctx};
use std::fmt;
use std::process::ExitCode;

/// A mistake in how cosmctl was called that clap itself cannot see (e.g. a rule without any
/// condition). Exits with status 2 like clap's usage errors, before any request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Splits clap's merged flag-or-environment value back into its two sources.
fn split_source(
    matches: &ArgMatches,
    id: &str,
    value: Option<String>,
) -> (Option<String>, Option<String>) {
    match matches.value_source(id) {
        Some(ValueSource::EnvVariable) => (None, value),
        _ => (value, None),
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let (flag_url, env_url) = split_source(matches, "url", cli.url);
    let (flag_token, env_token) = split_source(matches, "token", cli.token);
    let config_path = config::ConfigPath::choose(cli.config);
    let file = match &config_path {
        Some(p) => config::load_file(p)?,
        None => config::FileConfig::default(),
    };
    let settings = config::resolve(
        &config::Layer {
            url: flag_url,
            token: flag_token,
        },
        &config::Layer {
            url: env_url,
            token: env_token,
        },
        &file,
    );
    let token = if cli.command.needs_token() {
        let source = settings
            .token
            .as_ref()
            .ok_or_else(|| config::missing_token(config_path.as_ref()))?;
        Some(config::read_token(source)?)
    } else {
        None
    };
    let api = api::Api::new(&settings.url, token)
        .map_err(|e| anyhow::anyhow!("{e:#} (the URL came from {})", settings.url_origin))?;
    let ctx = Ctx {
        api,
        json: cli.json,
    };
    match cli.command {
        Command::Machines(cmd) => machines::run(&ctx, cmd),
        Command::Roles(cmd) => roles::run(&ctx, cmd),
        Command::Rules(cmd) => rules::run(&ctx, cmd),
        Command::Events(args) => machines::events(&ctx, args),
        Command::Tokens(cmd) => tokens::run(&ctx, cmd),
        Command::Leases(cmd) => leases::run(&ctx, cmd),
        Command::Images(cmd) => images::run(&ctx, cmd),
        Command::Vms(cmd) => vms::run(&ctx, cmd),
        Command::Hosts => vms::hosts(&ctx),
        Command::Networks(cmd) => networks::run(&ctx, cmd),
        Command::Ports(cmd) => ports::run(&ctx, cmd),
        Command::Secgroups(cmd) => secgroups::run(&ctx, cmd),
        Command::Alarms(args) => ha::alarms(&ctx, args),
        Command::Evacuations => ha::evacuations(&ctx),
        Command::Kickstart(cli::KickstartCmd::Render { mac }) => {
            let reply = ctx.api.get(&format!("/machines/{mac}/kickstart"), &[])?;
            print!("{}", reply.body);
            Ok(())
        }
        Command::Health => {
            let reply = ctx.api.health()?;
            ctx.show(reply, |h: cosm_wire::Health| {
                print(&format!(
                    "appliance at {} is {} (version {}, schema {})",
                    settings.url, h.status, h.version, h.schema_version
                ))
            })
        }
    }
}
