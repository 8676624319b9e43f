//! `cosmctl rules …`: the rules that give newly discovered machines their role. Builds a
//! [`RuleMatch`] from command-line flags (refusing an empty or contradictory one before any
//! request is sent) and writes a rule's conditions as one readable line.

use crate::output::{dash, print, print_table, table, Ctx};
use crate::UsageError;
use anyhow::Result;
use clap::{Args, Subcommand};
use cosm_wire::{MacAddr, MacPrefix, RoleName, Rule, RuleMatch, RuleSpec};

/// Subcommands of `cosmctl rules`.
#[derive(Debug, Subcommand)]
pub(crate) enum RulesCmd {
    /// List the rules in the order the appliance tries them, with their conditions.
    #[command(visible_alias = "ls")]
    List,
    /// Add a rule: machines matching every given condition get the role.
    #[command(
        after_help = "Examples:\n  cosmctl rules add --role host --mac-prefix 52:54:00 --min-cpus 16\n  cosmctl rules add --role storage --min-disks 4 --min-disk-gib 4000 --priority 50\n  cosmctl rules add --role web --vendor dell --max-memory-mib 65536"
    )]
    Add(Box<RuleAddArgs>),
    /// Delete a rule by its id (see `cosmctl rules list`).
    #[command(visible_alias = "delete")]
    Rm {
        /// Id of the rule.
        id: u64,
    },
}

/// Arguments of `cosmctl rules add`.
#[derive(Debug, Args)]
pub(crate) struct RuleAddArgs {
    /// Role given to the machines the rule matches.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: RoleName,
    /// Rules with a lower priority are tried first; equal priorities in creation order.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub(crate) priority: i32,
    /// Free text shown in `rules list`.
    #[arg(long, value_name = "TEXT")]
    pub(crate) description: Option<String>,
    #[command(flatten)]
    pub(crate) conditions: Conditions,
}

/// The match conditions of `rules add`. Every one given must hold; at least one is needed.
#[derive(Debug, Args)]
#[command(next_help_heading = "Conditions (all given must hold; give at least one)")]
pub(crate) struct Conditions {
    /// This exact MAC address.
    #[arg(long, value_name = "MAC")]
    pub(crate) mac: Option<MacAddr>,
    /// MAC addresses starting with these octets (an OUI is three, e.g. 52:54:00).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) mac_prefix: Option<MacPrefix>,
    /// At least this many logical CPUs (threads).
    #[arg(long, value_name = "N")]
    pub(crate) min_cpus: Option<u32>,
    /// At most this many logical CPUs (threads).
    #[arg(long, value_name = "N")]
    pub(crate) max_cpus: Option<u32>,
    /// At least this much memory, in MiB (64 GiB = 65536).
    #[arg(long, value_name = "MIB")]
    pub(crate) min_memory_mib: Option<u64>,
    /// At most this much memory, in MiB.
    #[arg(long, value_name = "MIB")]
    pub(crate) max_memory_mib: Option<u64>,
    /// At least this many disks.
    #[arg(long, value_name = "N")]
    pub(crate) min_disks: Option<u32>,
    /// At most this many disks.
    #[arg(long, value_name = "N")]
    pub(crate) max_disks: Option<u32>,
    /// The largest disk holds at least this many GiB.
    #[arg(long, value_name = "GIB")]
    pub(crate) min_disk_gib: Option<u64>,
    /// DMI system vendor contains this text (case-insensitive), e.g. "Dell".
    #[arg(long, value_name = "TEXT")]
    pub(crate) vendor: Option<String>,
    /// DMI product name contains this text (case-insensitive), e.g. "R640".
    #[arg(long, value_name = "TEXT")]
    pub(crate) product: Option<String>,
}

/// Every condition flag, for the "give at least one" message.
const CONDITION_FLAGS: &str = "--mac, --mac-prefix, --min-cpus, --max-cpus, --min-memory-mib, \
     --max-memory-mib, --min-disks, --max-disks, --min-disk-gib, --vendor, --product";

impl Conditions {
    /// The wire form of the conditions. Refuses an empty set (the rule would match every
    /// machine), blank texts and a minimum above its maximum.
    pub(crate) fn to_match(&self) -> Result<RuleMatch, UsageError> {
        let text = |flag: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
            Some("") => Err(UsageError(format!("{flag} needs a non-empty text"))),
            other => Ok(other.map(str::to_string)),
        };
        let m = RuleMatch {
            mac: self.mac,
            mac_prefix: self.mac_prefix.clone(),
            min_cpus: self.min_cpus,
            max_cpus: self.max_cpus,
            min_memory_mib: self.min_memory_mib,
            max_memory_mib: self.max_memory_mib,
            min_disks: self.min_disks,
            max_disks: self.max_disks,
            min_disk_gib: self.min_disk_gib,
            vendor_contains: text("--vendor", &self.vendor)?,
            product_contains: text("--product", &self.product)?,
        };
        if m.is_empty() {
            return Err(UsageError(format!(
                "a rule needs at least one condition, or it would match every machine; give one or more of {CONDITION_FLAGS}"
            )));
        }
        check_range("cpus", m.min_cpus, m.max_cpus)?;
        check_range("memory-mib", m.min_memory_mib, m.max_memory_mib)?;
        check_range("disks", m.min_disks, m.max_disks)?;
        Ok(m)
    }
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    what: &str,
    min: Option<T>,
    max: Option<T>,
) -> Result<(), UsageError> {
    match (min, max) {
        (Some(lo), Some(hi)) if lo > hi => Err(UsageError(format!(
            "--min-{what} {lo} is greater than --max-{what} {hi}; no machine could match"
        ))),
        _ => Ok(()),
    }
}

/// The conditions as one line of `key=value` pairs in the wire's field order, e.g.
/// `mac_prefix=52:54:00 min_cpus=16`. Texts with spaces are quoted.
pub(crate) fn summary(m: &RuleMatch) -> String {
    // Destructured without `..` so a new wire field cannot be silently left out.
    let RuleMatch {
        mac,
        mac_prefix,
        min_cpus,
        max_cpus,
        min_memory_mib,
        max_memory_mib,
        min_disks,
        max_disks,
        min_disk_gib,
        vendor_contains,
        product_contains,
    } = m;
    fn quoted(s: &str) -> String {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"') {
            format!("{s:?}")
        } else {
            s.to_string()
        }
    }
    let parts: Vec<String> = [
        ("mac", mac.map(|v| v.to_string())),
        ("mac_prefix", mac_prefix.as_ref().map(|v| v.to_string())),
        ("min_cpus", min_cpus.map(|v| v.to_string())),
        ("max_cpus", max_cpus.map(|v| v.to_string())),
        ("min_memory_mib", min_memory_mib.map(|v| v.to_string())),
        ("max_memory_mib", max_memory_mib.map(|v| v.to_string())),
        ("min_disks", min_disks.map(|v| v.to_string())),
        ("max_disks", max_disks.map(|v| v.to_string())),
        ("min_disk_gib", min_disk_gib.map(|v| v.to_string())),
        ("vendor_contains", vendor_contains.as_deref().map(quoted)),
        ("product_contains", product_contains.as_deref().map(quoted)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
    .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// Runs a `cosmctl rules` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: RulesCmd) -> Result<()> {
    match cmd {
        RulesCmd::List => {
            let reply = ctx.api.get_all("/rules", &[])?;
            ctx.show(reply, |rules: Vec<Rule>| {
                if rules.is_empty() {
                    eprintln!("no rules; add one with `cosmctl rules add`");
                    return Ok(());
                }
                let mut t = table(&["ID", "PRIORITY", "ROLE", "CONDITIONS", "DESCRIPTION"]);
                for r in &rules {
                    t.add_row(vec![
                        r.id.to_string(),
                        r.priority.to_string(),
                        r.role.to_string(),
                        summary(&r.matches),
                        dash(Some(&r.description)),
                    ]);
                }
                print_table(&t)
            })
        }
        RulesCmd::Add(args) => {
            let spec = RuleSpec {
                matches: args.conditions.to_match()?,
                role: args.role,
                priority: args.priority,
                description: args.description.unwrap_or_default(),
            };
            let reply = ctx.api.post("/rules", &spec)?;
            ctx.show(reply, |r: Rule| {
                print(&format!(
                    "created rule {} (priority {}): role {} when {}",
                    r.id,
                    r.priority,
                    r.role,
                    summary(&r.matches)
                ))
            })
        }
        RulesCmd::Rm { id } => {
            let reply = ctx.api.delete(&format!("/rules/{id}"))?;
            ctx.done(reply, format!("deleted rule {id}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn add_args(flags: &[&str]) -> RuleAddArgs {
        let argv = [&["cosmctl", "rules", "add"], flags].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Rules(RulesCmd::Add(a)) => *a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn summary_lists_given_conditions_in_order() {
        let m = RuleMatch {
            min_cpus: Some(16),
            mac_prefix: Some("52:54:00".parse().unwrap()),
            ..RuleMatch::default()
        };
        assert_eq!(summary(&m), "mac_prefix=52:54:00 min_cpus=16");

        let m = RuleMatch {
            mac: Some("52-54-00-AA-BB-01".parse().unwrap()),
            max_memory_mib: Some(65536),
            min_disk_gib: Some(500),
            vendor_contains: Some("Dell Inc.".into()),
            product_contains: Some("R640".into()),
            ..RuleMatch::default()
        };
        assert_eq!(
            summary(&m),
            r#"mac=52:54:00:aa:bb:01 max_memory_mib=65536 min_disk_gib=500 vendor_contains="Dell Inc." product_contains=R640"#
        );
        assert_eq!(summary(&RuleMatch::default()), "-");
    }

    #[test]
    fn flags_build_the_match() {
        let a = add_args(&[
            "--role",
            "host",
            "--mac-prefix",
            "52:54:00",
            "--min-cpus",
            "16",
            "--vendor",
            "Dell",
            "--product",
            "R640",
            "--min-disks",
            "2",
            "--max-disks",
            "8",
            "--min-memory-mib",
            "1024",
            "--max-memory-mib",
            "4096",
            "--max-cpus",
            "64",
            "--min-disk-gib",
            "100",
            "--mac",
            "52:54:00:aa:bb:01",
        ]);
        assert_eq!(a.role.as_str(), "host");
        assert_eq!(a.priority, 100);
        let m = a.conditions.to_match().unwrap();
        assert_eq!(
            m,
            RuleMatch {
                mac: Some("52:54:00:aa:bb:01".parse().unwrap()),
                mac_prefix: Some("52:54:00".parse().unwrap()),
                min_cpus: Some(16),
                max_cpus: Some(64),
                min_memory_mib: Some(1024),
                max_memory_mib: Some(4096),
                min_disks: Some(2),
                max_disks: Some(8),
                min_disk_gib: Some(100),
                vendor_contains: Some("Dell".into()),
                product_contains: Some("R640".into()),
            }
        );
        // The body sent uses the wire's key for the conditions.
        let spec = RuleSpec {
            role: a.role,
            priority: a.priority,
            description: String::new(),
            matches: RuleMatch {
                min_cpus: Some(16),
                ..RuleMatch::default()
            },
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["match"], serde_json::json!({"min_cpus": 16}));
    }

    #[test]
    fn empty_conditions_are_refused_before_sending() {
        let a = add_args(&[
            "--role",
            "host",
            "--priority",
            "-5",
            "--description",
            "all hosts",
        ]);
        assert_eq!(a.priority, -5);
        let err = a.conditions.to_match().unwrap_err().to_string();
        assert!(err.contains("at least one condition"), "{err}");
        assert!(err.contains("--mac-prefix"), "{err}");
    }

    #[test]
    fn contradictory_or_blank_conditions_are_refused() {
        let err = add_args(&["--role", "host", "--min-cpus", "32", "--max-cpus", "8"])
            .conditions
            .to_match()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--min-cpus 32 is greater than --max-cpus 8"),
            "{err}"
        );
        assert!(add_args(&["--role", "host", "--vendor", " "])
            .conditions
            .to_match()
            .is_err());
        assert!(Cli::try_parse_from([
            "cosmctl",
            "rules",
            "add",
            "--role",
            "host",
            "--mac-prefix",
            "52:54:00:aa:bb:01"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["cosmctl", "rules", "add", "--min-cpus", "4"]).is_err());
    }
}
