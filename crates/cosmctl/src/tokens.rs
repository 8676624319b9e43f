//! `cosmctl tokens …`: the API tokens that may call the appliance.

use crate::output::{print, print_table, table, time, wire_name, Ctx};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use cosm_wire::{CreateToken, CreatedToken, Scope, TokenInfo};

/// What a new token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScopeArg {
    /// Every call, including managing tokens.
    Admin,
    /// Only reading calls (list, show, events).
    Read,
    /// Only agent enrolment: the token for ramdisk kernel command lines.
    Enroll,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Scope {
        match s {
            ScopeArg::Admin => Scope::Admin,
            ScopeArg::Read => Scope::Read,
            ScopeArg::Enroll => Scope::Enroll,
        }
    }
}

/// Subcommands of `cosmctl tokens`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokensCmd {
    /// List the tokens (their secrets are never shown again).
    #[command(visible_alias = "ls")]
    List,
    /// Create a token and print its secret, once.
    ///
    /// The secret alone goes to stdout and everything else to stderr, so it can be
    /// redirected straight into a token file.
    #[command(after_help = "Example:\n  cosmctl tokens add ci --scope read > ci.token")]
    Add {
        /// A name saying who or what uses the token.
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        scope: ScopeArg,
    },
    /// Revoke a token by its id (see `cosmctl tokens list`).
    #[command(visible_alias = "delete")]
    Rm {
        /// Id of the token.
        id: u64,
    },
}

const SHOWN_ONCE: &str = "warning: store this token now; the appliance will not show it again";

/// Runs a `cosmctl tokens` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: TokensCmd) -> Result<()> {
    match cmd {
        TokensCmd::List => {
            let reply = ctx.api.get_all("/tokens", &[])?;
            ctx.show(reply, |tokens: Vec<TokenInfo>| {
                let mut t = table(&["ID", "NAME", "SCOPE", "CREATED"]);
                for tok in &tokens {
                    t.add_row(vec![
                        tok.id.to_string(),
                        tok.name.clone(),
                        wire_name(&tok.scope),
                        time(tok.created_at),
                    ]);
                }
                print_table(&t)
            })
        }
        TokensCmd::Add { name, scope } => {
            let body = CreateToken {
                name,
                scope: scope.into(),
            };
            let reply = ctx.api.post("/tokens", &body)?;
            let json = ctx.json;
            ctx.show(reply, |c: CreatedToken| {
                eprintln!(
                    "created token {} ({:?}, scope {})",
                    c.info.id,
                    c.info.name,
                    wire_name(&c.info.scope)
                );
                print(&c.token)?;
                eprintln!("{SHOWN_ONCE}");
                Ok(())
            })?;
            if json {
                eprintln!("{SHOWN_ONCE}");
            }
            Ok(())
        }
        TokensCmd::Rm { id } => {
            let reply = ctx.api.delete(&format!("/tokens/{id}"))?;
            ctx.done(reply, format!("deleted token {id}"))
        }
    }
}
