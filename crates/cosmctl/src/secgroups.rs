//! `cosmctl secgroups …`: security groups, the allow rules a tenant-network port gets.
//! Rules are written in the compact syntax of [`crate::secrule_syntax`], or read from a JSON
//! file; `show` writes them back in that syntax, one per line.

use crate::api::{add_hint, ApiError};
use crate::output::{print, print_table, table, Ctx};
use crate::secrule_syntax::{check_rule, format_rule, parse_rule, SYNTAX_HELP};
use crate::UsageError;
use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use cosm_wire::{SecGroupName, SecRule, SecurityGroup};
use std::io::Read;
use std::path::{Path, PathBuf};

pub(crate) const SECGROUPS_ABOUT: &str = "\
Security groups: named sets of allow rules for the ports of tenant networks. A port with
groups passes only what their rules allow (and replies to it); a port without any group
passes everything. Either way a port sends only from its own MAC and address.

Examples:
  cosmctl secgroups set ssh --rule in:tcp:22:0.0.0.0/0 --rule out:any::0.0.0.0/0
  cosmctl secgroups set web --rule in:tcp:80:0.0.0.0/0 --rule in:tcp:443:0.0.0.0/0
  cosmctl secgroups set db --rule in:tcp:5432:group=web
  cosmctl secgroups show web
  cosmctl secgroups set web --from-file web.json
  cosmctl ports set-groups 52:54:00:12:34:56 --group ssh --group web";

/// Subcommands of `cosmctl secgroups`.
#[derive(Debug, Subcommand)]
pub(crate) enum SecgroupsCmd {
    /// List the security groups with their rules.
    #[command(visible_alias = "ls")]
    List,
    /// Print a group's rules, one per line, in the syntax `set --rule` takes.
    Show {
        /// The group's name.
        name: SecGroupName,
    },
    /// Create a security group, or replace all the rules of one.
    #[command(long_about = SET_ABOUT, after_help = set_after())]
    Set(SetArgs),
    /// Delete a security group (refused while another group's rule names it).
    #[command(visible_alias = "rm")]
    Delete {
        /// The group's name.
        name: SecGroupName,
    },
}

const SET_ABOUT: &str = "\
Create a security group, or replace all the rules of an existing one: its ports get the new
rules at once. Give the rules with --rule (repeatable), or the whole group as JSON with
--from-file, or --no-rules for a group that allows nothing.";

/// The help after `set`'s options: the rule syntax, then the file format and examples.
fn set_after() -> String {
    format!("{SYNTAX_HELP}\n\n{SET_AFTER}")
}

const SET_AFTER: &str = "\
--from-file reads a SecurityGroup as the API takes it (`-` for stdin), e.g.
  {\"name\": \"web\", \"rules\": [{\"direction\": \"ingress\", \"protocol\": \"tcp\",
   \"ports\": [443, 443], \"remote\": {\"cidr\": \"0.0.0.0/0\"}}]}
`cosmctl --json secgroups show NAME` writes one.

Examples:
  cosmctl secgroups set ssh --rule in:tcp:22:0.0.0.0/0 --rule out:any::0.0.0.0/0
  cosmctl secgroups set app --rule in:tcp:8000-8080:group=web --rule in:icmp::10.0.0.0/8
  cosmctl secgroups set quarantine --no-rules
  cosmctl secgroups show web | sed 's/^/--rule /' | xargs cosmctl secgroups set web-copy";

/// Arguments of `cosmctl secgroups set`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rules_from").required(true).args(["rules", "from_file", "no_rules"])))]
pub(crate) struct SetArgs {
    /// The group's name: letters, digits, '.', '_', '-' (at most 32).
    pub(crate) name: SecGroupName,
    /// An allow rule, DIRECTION:PROTOCOL:PORTS:REMOTE (see below); repeatable.
    #[arg(long = "rule", value_name = "SPEC", value_parser = parse_rule)]
    pub(crate) rules: Vec<SecRule>,
    /// Read the group (a SecurityGroup in JSON) from FILE, `-` for stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rules", "no_rules"])]
    pub(crate) from_file: Option<PathBuf>,
    /// A group without rules: its ports pass no traffic at all.
    #[arg(long, conflicts_with = "rules")]
    pub(crate) no_rules: bool,
}

/// The group in a `--from-file` text, checked: its name must be `name`, its rules what the
/// appliance takes. Mistakes are [`UsageError`]s naming the file and the rule.
pub(crate) fn group_from_json(
    text: &str,
    from: &str,
    name: &SecGroupName,
) -> Result<SecurityGroup, UsageError> {
    let g: SecurityGroup = serde_json::from_str(text).map_err(|e| {
        UsageError(format!(
            "--from-file {from}: not a security group in JSON ({{\"name\": …, \"rules\": […]}}): {e}"
        ))
    })?;
    if &g.name != name {
        return Err(UsageError(format!(
            "--from-file {from} holds group {} but the command names {name}",
            g.name
        )));
    }
    for (i, r) in g.rules.iter().enumerate() {
        check_rule(r).map_err(|e| {
            UsageError(format!(
                "--from-file {from}: rule {} ({}): {e}",
                i + 1,
                format_rule(r)
            ))
        })?;
    }
    Ok(g)
}

fn read_file(path: &Path) -> Result<String, UsageError> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| UsageError(format!("cannot read the group from stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read --from-file {}: {e}", path.display())))
    }
}

impl SetArgs {
    /// The `PUT /api/v1/secgroups/{name}` body; `read` reads the --from-file file.
    pub(crate) fn to_group(
        &self,
        read: impl FnOnce(&Path) -> Result<String, UsageError>,
    ) -> Result<SecurityGroup, UsageError> {
        match &self.from_file {
            Some(path) => {
                let text = read(path)?;
                let from = if path.as_os_str() == "-" {
                    "stdin".to_string()
                } else {
                    path.display().to_string()
                };
                group_from_json(&text, &from, &self.name)
            }
            None => Ok(SecurityGroup {
                name: self.name.clone(),
                rules: self.rules.clone(),
            }),
        }
    }
}

/// The appliance names a refused rule by its index (`rules[1].remote: …`); this says which
/// rule of the command line that is.
pub(crate) fn rule_hint(api: &ApiError, rules: &[SecRule]) -> Option<String> {
    let msg = &api.body.message;
    let start = msg.find("rules[")? + "rules[".len();
    let len = msg[start..].find(']')?;
    let i: usize = msg[start..start + len].parse().ok()?;
    let r = rules.get(i)?;
    Some(format!("rules[{i}] is rule {}, {}", i + 1, format_rule(r)))
}

fn group_path(name: &SecGroupName) -> String {
    format!("/secgroups/{name}")
}

/// The rules of a group as lines of the compact syntax.
pub(crate) fn rule_lines(g: &SecurityGroup) -> Vec<String> {
    g.rules.iter().map(format_rule).collect()
}

pub(crate) fn groups_table(groups: &[SecurityGroup]) -> comfy_table::Table {
    let mut t = table(&["NAME", "RULES"]);
    for g in groups {
        let rules = if g.rules.is_empty() {
            "none: its ports pass nothing".to_string()
        } else {
            rule_lines(g).join("\n")
        };
        t.add_row(vec![g.name.to_string(), rules]);
    }
    t
}

/// Runs a `cosmctl secgroups` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: SecgroupsCmd) -> Result<()> {
    match cmd {
        SecgroupsCmd::List => {
            let reply = ctx.api.get_all("/secgroups", &[])?;
            ctx.show(reply, |groups: Vec<SecurityGroup>| {
                if groups.is_empty() {
                    eprintln!("no security groups");
                    return Ok(());
                }
                print_table(&groups_table(&groups))
            })
        }
        SecgroupsCmd::Show { name } => {
            let reply = ctx.api.get(&group_path(&name), &[])?;
            ctx.show(reply, |g: SecurityGroup| {
                if g.rules.is_empty() {
                    eprintln!("security group {name} has no rules: its ports pass nothing");
                }
                for line in rule_lines(&g) {
                    print(&line)?;
                }
                Ok(())
            })
        }
        SecgroupsCmd::Set(args) => {
            let group = args.to_group(read_file)?;
            let reply = ctx
                .api
                .put(&group_path(&group.name), &group)
                .map_err(|e| add_hint(e, |api| rule_hint(api, &group.rules)))?;
            ctx.show(reply, |g: SecurityGroup| {
                let n = g.rules.len();
                print(&format!(
                    "set security group {}: {n} rule{}{}",
                    g.name,
                    if n == 1 { "" } else { "s" },
                    if n == 0 {
                        " (its ports pass nothing)"
                    } else {
                        ""
                    }
                ))?;
                for line in rule_lines(&g) {
                    print(&format!("  {line}"))?;
                }
                Ok(())
            })
        }
        SecgroupsCmd::Delete { name } => {
            let reply = ctx.api.delete(&group_path(&name))?;
            ctx.done(reply, format!("deleted security group {name}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use reqwest::StatusCode;

    fn parse(args: &[&str]) -> Result<SecgroupsCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "secgroups"], args].concat())?;
        match cli.command {
            Command::Secgroups(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn set_args(args: &[&str]) -> SetArgs {
        match parse(&[&["set"], args].concat()).unwrap() {
            SecgroupsCmd::Set(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn no_file(_: &Path) -> Result<String, UsageError> {
        panic!("no file should be read")
    }

    #[test]
    fn set_builds_the_group_from_rules() {
        let g = set_args(&[
            "web",
            "--rule",
            "in:tcp:443:0.0.0.0/0",
            "--rule",
            "in:tcp:8000-8080:group=lb",
            "--rule",
            "out:any::0.0.0.0/0",
        ])
        .to_group(no_file)
        .unwrap();
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            serde_json::json!({
                "name": "web",
                "rules": [
                    {"direction": "ingress", "protocol": "tcp", "ports": [443, 443], "remote": {"cidr": "0.0.0.0/0"}},
                    {"direction": "ingress", "protocol": "tcp", "ports": [8000, 8080], "remote": {"group": "lb"}},
                    {"direction": "egress", "protocol": "any", "ports": null, "remote": {"cidr": "0.0.0.0/0"}},
                ]
            })
        );
        let g = set_args(&["closed", "--no-rules"])
            .to_group(no_file)
            .unwrap();
        assert!(g.rules.is_empty());
    }

    #[test]
    fn set_needs_exactly_one_source_of_rules() {
        let err = |args: &[&str]| parse(&[&["set"], args].concat()).unwrap_err().to_string();
        // Without any, a group that passes nothing would be made by accident.
        let e = err(&["web"]);
        assert!(
            e.contains("--rule") && e.contains("--from-file") && e.contains("--no-rules"),
            "{e}"
        );
        let e = err(&[
            "web",
            "--rule",
            "in:tcp:22:0.0.0.0/0",
            "--from-file",
            "g.json",
        ]);
        assert!(e.contains("cannot be used with"), "{e}");
        let e = err(&["web", "--rule", "in:tcp:22:0.0.0.0/0", "--no-rules"]);
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn a_bad_rule_is_refused_naming_it_and_the_part() {
        let e = parse(&[
            "set",
            "web",
            "--rule",
            "in:tcp:22:0.0.0.0/0",
            "--rule",
            "in:icmp:8:0.0.0.0/0",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        let e = e.to_string();
        assert!(e.contains("'in:icmp:8:0.0.0.0/0'"), "{e}");
        assert!(e.contains("--rule <SPEC>"), "{e}");
        assert!(e.contains("the ports \"8\" go only with tcp or udp"), "{e}");
    }

    #[test]
    fn set_reads_a_group_from_a_file() {
        let args = set_args(&["web", "--from-file", "web.json"]);
        let json = r#"{"name":"web","rules":[{"direction":"ingress","protocol":"tcp","ports":[22,22],"remote":{"cidr":"10.0.0.0/8"}}]}"#;
        let g = args
            .to_group(|p| {
                assert_eq!(p, Path::new("web.json"));
                Ok(json.to_string())
            })
            .unwrap();
        assert_eq!(rule_lines(&g), ["in:tcp:22:10.0.0.0/8"]);

        let bad = |text: &str| {
            set_args(&["web", "--from-file", "-"])
                .to_group(|_| Ok(text.to_string()))
                .unwrap_err()
                .to_string()
        };
        let e = bad(r#"{"name":"db","rules":[]}"#);
        assert_eq!(
            e,
            "--from-file stdin holds group db but the command names web"
        );
        let e = bad(r#"{"name":"web","rules":[{"direction":"in"}]}"#);
        assert!(
            e.starts_with("--from-file stdin: not a security group"),
            "{e}"
        );
        let e = bad(r#"{"name":"web","rules":[
                {"direction":"ingress","protocol":"any","remote":{"cidr":"0.0.0.0/0"}},
                {"direction":"ingress","protocol":"icmp","ports":[1,1],"remote":{"cidr":"0.0.0.0/0"}}]}"#);
        assert!(
            e.starts_with("--from-file stdin: rule 2 (in:icmp:1:0.0.0.0/0): the ports \"1\""),
            "{e}"
        );
    }

    #[test]
    fn show_writes_rules_that_set_reads_back() {
        let specs = [
            "in:tcp:22:0.0.0.0/0",
            "in:tcp:8000-8080:group=web",
            "in:icmp::10.0.0.0/8",
            "out:any::0.0.0.0/0",
        ];
        let mut args = vec!["web"];
        for s in specs {
            args.extend(["--rule", s]);
        }
        let g = set_args(&args).to_group(no_file).unwrap();
        // What the appliance answers is what `show` prints…
        let answer: SecurityGroup =
            serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        let lines = rule_lines(&answer);
        assert_eq!(lines, specs);
        // …and those lines, given back to `set`, make the same group.
        let mut again = vec!["web"];
        for l in &lines {
            again.extend(["--rule", l.as_str()]);
        }
        assert_eq!(set_args(&again).to_group(no_file).unwrap(), answer);
    }

    #[test]
    fn the_list_shows_each_rule_on_a_line() {
        let g = set_args(&[
            "web",
            "--rule",
            "in:tcp:80:0.0.0.0/0",
            "--rule",
            "out:any::0.0.0.0/0",
        ])
        .to_group(no_file)
        .unwrap();
        let empty = SecurityGroup {
            name: "closed".parse().unwrap(),
            rules: vec![],
        };
        let text = groups_table(&[g, empty]).to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("RULES"),
            "{text}"
        );
        assert!(lines[1].starts_with("web") && lines[1].ends_with("in:tcp:80:0.0.0.0/0"));
        assert!(lines[2].ends_with("out:any::0.0.0.0/0"), "{text}");
        assert!(
            lines[3].starts_with("closed") && lines[3].contains("none"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_rule_is_named_by_its_place_on_the_command_line() {
        let rules = vec![
            parse_rule("in:tcp:22:0.0.0.0/0").unwrap(),
            parse_rule("in:tcp:5432:group=nope").unwrap(),
        ];
        let api = ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: cosm_wire::ErrorBody {
                code: "invalid".into(),
                message: "rules[1].remote: there is no security group nope".into(),
                field: Some("rules".into()),
            },
        };
        assert_eq!(
            rule_hint(&api, &rules).as_deref(),
            Some("rules[1] is rule 2, in:tcp:5432:group=nope")
        );
        let other = ApiError {
            body: cosm_wire::ErrorBody {
                message: "something else".into(),
                ..api.body.clone()
            },
            ..api
        };
        assert_eq!(rule_hint(&other, &rules), None);
    }
}
