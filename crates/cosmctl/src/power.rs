//! `cosmctl machines power …` and `cosmctl machines power-settings …`: a machine's power
//! through its BMC (Redfish, IPMI) or an operator's fence command (`exec`).
//!
//! The appliance makes every BMC call; cosmctl never talks to a BMC itself. A BMC password
//! is read from a file (or stdin, or `COSM_BMC_PASSWORD`), never from a command-line flag,
//! because other users can read a process's arguments in `ps`.

use crate::api::ApiError;
use crate::output::{dash, kv_table, print, print_table, table, Ctx};
use crate::UsageError;
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use cosm_wire::{
    MacAddr, PowerAction, PowerRequest, PowerSettings, PowerSettingsView, PowerState, PowerStatus,
};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The environment variable a BMC password may come from when --password-file is not given.
pub(crate) const PASSWORD_ENV: &str = "COSM_BMC_PASSWORD";

pub(crate) const POWER_ABOUT: &str = "\
Power a machine on or off, or read its power, through the BMC or fence command set with
`cosmctl machines power-settings set`. The appliance makes the call and answers with what
the BMC reports right after it: MAC, DRIVER, ADDRESS, STATE (on/off) and TOOK (how long the
BMC took). A BMC accepts an action before it is done, so STATE may still show the old state
for a few seconds; `power status` reads it again.

What each action does:
  on        power on.  Redfish: Reset On; IPMI: `chassis power on`; exec: `COMMAND… on`
  off       HARD power-off, no OS shutdown (the guest OS gets no chance to flush or stop
            its services). Redfish: Reset ForceOff; IPMI: `chassis power off`;
            exec: `COMMAND… off`. This is what fencing uses.
  cycle     hard off, then on.  Redfish: a power-cycle Reset; IPMI: `chassis power cycle`;
            exec: `COMMAND… cycle`
  status    read the power state now (changes nothing).  Redfish: the system's PowerState;
            IPMI: `chassis power status`; exec: `COMMAND… status`, which prints on or off
  pxe-once  boot from the network at the next power-on only; later boots are as before. It
            does not power the machine on or restart it: follow with `cycle` (or `on`).
            Redfish: a boot source override Pxe, enabled Once; IPMI: `chassis bootdev pxe`;
            exec: `COMMAND… pxe-once`

Exit status: 0 when the BMC did it; 1 when the appliance refuses or the BMC fails (HTTP 502
with code bmc_unreachable, bmc_auth_failed or bmc_failed, and the BMC's reason); 2 on a
usage error.

Examples:
  cosmctl machines power status 52:54:00:aa:bb:01
  cosmctl machines power pxe-once 52:54:00:aa:bb:01 && cosmctl machines power cycle 52:54:00:aa:bb:01
  cosmctl --json machines power off 52:54:00:aa:bb:01";

/// Subcommands of `cosmctl machines power`.
#[derive(Debug, Subcommand)]
pub(crate) enum PowerCmd {
    /// Power the machine on.
    On(MacArg),
    /// Hard power-off: cut the power at once, without an OS shutdown.
    Off(MacArg),
    /// Hard power-off, then on.
    Cycle(MacArg),
    /// Read the machine's power state from its BMC now.
    Status(MacArg),
    /// Boot from the network at the next power-on only (does not power on or restart).
    PxeOnce(MacArg),
}

/// The one argument of each `power` subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct MacArg {
    /// MAC address of the machine (see `cosmctl machines list`).
    pub(crate) mac: MacAddr,
}

impl PowerCmd {
    pub(crate) fn mac(&self) -> MacAddr {
        match self {
            PowerCmd::On(a)
            | PowerCmd::Off(a)
            | PowerCmd::Cycle(a)
            | PowerCmd::Status(a)
            | PowerCmd::PxeOnce(a) => a.mac,
        }
    }

    /// The action to POST; `None` for `status`, which is a GET.
    pub(crate) fn action(&self) -> Option<PowerAction> {
        match self {
            PowerCmd::On(_) => Some(PowerAction::On),
            PowerCmd::Off(_) => Some(PowerAction::Off),
            PowerCmd::Cycle(_) => Some(PowerAction::Cycle),
            PowerCmd::Status(_) => None,
            PowerCmd::PxeOnce(_) => Some(PowerAction::PxeOnce),
        }
    }
}

pub(crate) const SETTINGS_ABOUT: &str = "\
How the appliance reaches a machine's power: a Redfish BMC, an IPMI BMC (through ipmitool
on the appliance), or an operator's fence command run on the appliance (`exec`). The
appliance uses them for `cosmctl machines power` and to fence a lost VM host before its HA
VMs are restarted elsewhere.

The BMC password is stored on the appliance and never shown again: `show` and --json say
only whether one is set. To change it, `set` the settings again.";

/// Subcommands of `cosmctl machines power-settings`.
#[derive(Debug, Subcommand)]
pub(crate) enum PowerSettingsCmd {
    /// Store how the appliance reaches the machine's power (replacing what was there).
    #[command(long_about = SET_ABOUT, after_help = SET_AFTER)]
    Set(Box<SetArgs>),
    /// Show a machine's power settings (never the password: only whether one is set).
    Show(MacArg),
    /// Remove a machine's power settings; it can no longer be powered or fenced.
    #[command(visible_alias = "rm")]
    Clear(MacArg),
}

const SET_ABOUT: &str = "\
Store how the appliance reaches the machine's power, replacing what was there. Nothing is
tried now: `cosmctl machines power status MAC` checks the settings work.

The password of a Redfish or IPMI BMC is read from --password-file (a file, or `-` for
stdin; one trailing newline is dropped), else from the COSM_BMC_PASSWORD environment
variable. There is no --password flag: a command line can be read by every user of the
machine (`ps`). The password is stored on the appliance and never shown again, not by
`show`, not with --json.";

const SET_AFTER: &str = "\
Drivers and their flags:
  redfish  --bmc-url URL --username U [--system ID] [--verify-tls]
           URL is the BMC's origin (https://10.0.0.5); --system is the id under
           /redfish/v1/Systems/ (needed only when the BMC has several). Self-signed BMC
           certificates are accepted unless --verify-tls.
  ipmi     --host H [--port 623] --username U        (IPMI v2.0, lanplus)
  exec     --command /ABS/PATH [--arg A]... [--address ADDR] [--timeout-secs 30]
           Runs `PATH A… ACTION` on the appliance with ACTION one of on, off, cycle,
           status, pxe-once, and COSM_POWER_ACTION, COSM_MACHINE_MAC and
           COSM_MACHINE_ADDRESS (ADDR) in its environment. Exit 0 is success; `status`
           prints on or off. Killed after --timeout-secs (1-600).

Examples:
  cosmctl machines power-settings set 52:54:00:aa:bb:01 --driver redfish --bmc-url https://10.0.0.5 --username admin --password-file bmc.pw
  pass show bmc/rack1 | cosmctl machines power-settings set 52:54:00:aa:bb:01 --driver ipmi --host 10.0.0.6 --username ADMIN --password-file -
  COSM_BMC_PASSWORD=... cosmctl machines power-settings set 52:54:00:aa:bb:01 --driver ipmi --host 10.0.0.6 --username ADMIN
  cosmctl machines power-settings set 52:54:00:aa:bb:01 --driver exec --command /usr/local/bin/fence-pdu --arg --outlet=7 --address pdu1";

/// Which power driver `set` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DriverArg {
    /// A Redfish BMC (iDRAC, iLO, XCC, OpenBMC…).
    Redfish,
    /// An IPMI v2.0 BMC, through ipmitool on the appliance.
    Ipmi,
    /// A fence command on the appliance.
    Exec,
}

impl DriverArg {
    fn name(self) -> &'static str {
        match self {
            DriverArg::Redfish => "redfish",
            DriverArg::Ipmi => "ipmi",
            DriverArg::Exec => "exec",
        }
    }
}

/// Arguments of `cosmctl machines power-settings set`. Which flags a driver takes is
/// checked in [`SetArgs::to_settings`], so that the error can name the driver.
#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// MAC address of the machine.
    pub(crate) mac: MacAddr,
    /// How the appliance reaches the machine's power.
    #[arg(long, value_enum)]
    pub(crate) driver: DriverArg,

    /// redfish: the BMC's URL, e.g. https://10.0.0.5. (Not `--url`: that is the
    /// appliance's, a global flag.)
    #[arg(long = "bmc-url", value_name = "URL", help_heading = "Redfish")]
    pub(crate) bmc_url: Option<String>,
    /// redfish: the ComputerSystem id under /redfish/v1/Systems/ [default: the only one].
    #[arg(long, value_name = "ID", help_heading = "Redfish")]
    pub(crate) system: Option<String>,
    /// redfish: refuse a BMC certificate that is not trusted (by default self-signed ones,
    /// which most BMCs ship with, are accepted).
    #[arg(long, help_heading = "Redfish")]
    pub(crate) verify_tls: bool,

    /// ipmi: the BMC's host name or address.
    #[arg(long, value_name = "HOST", help_heading = "IPMI")]
    pub(crate) host: Option<String>,
    /// ipmi: the BMC's UDP port [default: 623].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..), help_heading = "IPMI")]
    pub(crate) port: Option<u16>,

    /// redfish, ipmi: the BMC user.
    #[arg(long, value_name = "USER", help_heading = "Redfish and IPMI")]
    pub(crate) username: Option<String>,
    /// redfish, ipmi: a file holding the BMC password, `-` for stdin [default: the
    /// COSM_BMC_PASSWORD environment variable]. Stored on the appliance, never shown again.
    #[arg(long, value_name = "FILE", help_heading = "Redfish and IPMI")]
    pub(crate) password_file: Option<PathBuf>,

    /// exec: absolute path of the fence program.
    #[arg(long, value_name = "PATH", help_heading = "exec")]
    pub(crate) command: Option<String>,
    /// exec: an argument put before the action; repeatable, in order.
    #[arg(
        long = "arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        help_heading = "exec"
    )]
    pub(crate) args: Vec<String>,
    /// exec: what the command gets as COSM_MACHINE_ADDRESS (e.g. a PDU outlet).
    #[arg(long, value_name = "ADDR", help_heading = "exec")]
    pub(crate) address: Option<String>,
    /// exec: seconds the command may run before it is killed (1-600) [default: 30].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=600), help_heading = "exec")]
    pub(crate) timeout_secs: Option<u32>,
}

/// Where a BMC password comes from, and reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    /// `--password-file PATH`, `-` for stdin.
    File(PathBuf),
    /// `COSM_BMC_PASSWORD`.
    Env(String),
    None,
}

impl PasswordSource {
    /// `--password-file` first, then the environment (an explicit flag beats an ambient
    /// variable, as `--token` beats `COSM_TOKEN`).
    pub(crate) fn choose(file: Option<&Path>, env: Option<String>) -> PasswordSource {
        match (file, env) {
            (Some(f), _) => PasswordSource::File(f.to_path_buf()),
            (None, Some(v)) => PasswordSource::Env(v),
            (None, None) => PasswordSource::None,
        }
    }
}

/// A password file's text without the newline an editor or `echo` leaves at its end.
/// Anything else (inner or leading blanks) is kept: it may be part of the password.
pub(crate) fn password_from_text(text: &str) -> &str {
    let t = text.strip_suffix('\n').unwrap_or(text);
    t.strip_suffix('\r').unwrap_or(t)
}

fn read_password(source: &PasswordSource) -> Result<String> {
    let (text, from) = match source {
        PasswordSource::File(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| UsageError(format!("cannot read the BMC password from stdin: {e}")))?;
            (s, "stdin".to_string())
        }
        PasswordSource::File(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| {
                UsageError(format!("cannot read --password-file {}: {e}", p.display()))
            })?;
            (s, p.display().to_string())
        }
        PasswordSource::Env(v) => (v.clone(), PASSWORD_ENV.to_string()),
        PasswordSource::None => return Ok(String::new()),
    };
    let pw = password_from_text(&text);
    if pw.is_empty() {
        return Err(UsageError(format!("the BMC password from {from} is empty")).into());
    }
    Ok(pw.to_string())
}

impl SetArgs {
    /// The flags given that `driver` does not take, by their command-line names.
    fn foreign_flags(&self) -> Vec<&'static str> {
        // (flag, given, taken by [redfish, ipmi, exec])
        let given = [
            ("--bmc-url", self.bmc_url.is_some(), [true, false, false]),
            ("--system", self.system.is_some(), [true, false, false]),
            ("--verify-tls", self.verify_tls, [true, false, false]),
            ("--host", self.host.is_some(), [false, true, false]),
            ("--port", self.port.is_some(), [false, true, false]),
            ("--username", self.username.is_some(), [true, true, false]),
            (
                "--password-file",
                self.password_file.is_some(),
                [true, true, false],
            ),
            ("--command", self.command.is_some(), [false, false, true]),
            ("--arg", !self.args.is_empty(), [false, false, true]),
            ("--address", self.address.is_some(), [false, false, true]),
            (
                "--timeout-secs",
                self.timeout_secs.is_some(),
                [false, false, true],
            ),
        ];
        let col = match self.driver {
            DriverArg::Redfish => 0,
            DriverArg::Ipmi => 1,
            DriverArg::Exec => 2,
        };
        given
            .into_iter()
            .filter(|(_, set, takes)| *set && !takes[col])
            .map(|(name, ..)| name)
            .collect()
    }

    /// The request body. `password` is called only for drivers that need one, so that an
    /// `exec` setting never reads stdin or a file. Every mistake is a [`UsageError`] that
    /// names the flag.
    pub(crate) fn to_settings(
        &self,
        password: impl FnOnce() -> Result<String>,
    ) -> Result<PowerSettings> {
        let driver = self.driver.name();
        let foreign = self.foreign_flags();
        if !foreign.is_empty() {
            return Err(UsageError(format!(
                "--driver {driver} does not take {}",
                foreign.join(", ")
            ))
            .into());
        }
        let need = |v: &Option<String>, flag: &str| -> Result<String> {
            match v.as_deref().map(str::trim) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(UsageError(format!("--driver {driver} needs {flag}")).into()),
            }
        };
        // Called at most once, and only by the drivers that take a password.
        let mut password = Some(password);
        let mut need_password = || -> Result<String> {
            let pw = match password.take() {
                Some(read) => read()?,
                None => String::new(),
            };
            if pw.is_empty() {
                return Err(UsageError(format!(
                    "--driver {driver} needs a password: --password-file FILE (or - for stdin), \
                     or the {PASSWORD_ENV} environment variable"
                ))
                .into());
            }
            Ok(pw)
        };
        let settings = match self.driver {
            DriverArg::Redfish => PowerSettings::Redfish {
                url: need(&self.bmc_url, "--bmc-url URL")?,
                username: need(&self.username, "--username USER")?,
                password: need_password()?,
                system: self.system.clone().filter(|s| !s.trim().is_empty()),
                insecure_tls: !self.verify_tls,
            },
            DriverArg::Ipmi => PowerSettings::Ipmi {
                host: need(&self.host, "--host HOST")?,
                port: self.port.unwrap_or(623),
                username: need(&self.username, "--username USER")?,
                password: need_password()?,
            },
            DriverArg::Exec => PowerSettings::Exec {
                command: std::iter::once(need(&self.command, "--command PATH")?)
                    .chain(self.args.iter().cloned())
                    .collect(),
                address: self.address.clone().filter(|s| !s.trim().is_empty()),
                timeout_secs: self.timeout_secs.unwrap_or(30),
            },
        };
        // The same checks the appliance makes, before a password leaves this machine.
        settings
            .validate()
            .map_err(|e| UsageError(format!("--driver {driver}: {e}")))?;
        Ok(settings)
    }
}

fn settings_path(mac: &MacAddr) -> String {
    format!("/machines/{mac}/power-settings")
}

fn power_path(mac: &MacAddr) -> String {
    format!("/machines/{mac}/power")
}

/// What to try next after the appliance refused a power call, by its error code.
pub(crate) fn hint(code: &str, mac: &MacAddr) -> Option<String> {
    Some(match code {
        "bmc_unreachable" => format!(
            "is the BMC's address right and reachable from the appliance? \
             (`cosmctl machines power-settings show {mac}`)"
        ),
        "bmc_auth_failed" => format!(
            "store the right user and password with `cosmctl machines power-settings set {mac} …`"
        ),
        "not_found" => format!(
            "a machine needs power settings first: `cosmctl machines power-settings set {mac} …`"
        ),
        _ => return None,
    })
}

/// Adds [`hint`] to an appliance refusal; other errors pass unchanged.
fn with_hint(e: anyhow::Error, mac: &MacAddr) -> anyhow::Error {
    let hint = e
        .downcast_ref::<ApiError>()
        .and_then(|api| hint(&api.body.code, mac));
    match hint {
        Some(h) => anyhow::anyhow!("{e:#}\nhint: {h}"),
        None => e,
    }
}

/// Runs `cosmctl machines power …`.
pub(crate) fn run_power(ctx: &Ctx, cmd: PowerCmd) -> Result<()> {
    let mac = cmd.mac();
    let reply = match cmd.action() {
        None => ctx.api.get(&power_path(&mac), &[]),
        Some(action) => ctx.api.post(&power_path(&mac), &PowerRequest { action }),
    }
    .map_err(|e| with_hint(e, &mac))?;
    ctx.show(reply, |s: PowerStatus| {
        print_table(&status_table(&s))?;
        if let Some(note) = cmd.action().and_then(|a| after_note(a, &s)) {
            eprintln!("{note}");
        }
        Ok(())
    })
}

/// A line after an action whose table alone could mislead.
pub(crate) fn after_note(action: PowerAction, s: &PowerStatus) -> Option<String> {
    match (action, s.state) {
        (PowerAction::PxeOnce, PowerState::On) => Some(format!(
            "{} boots from the network at its next power-on; it is on now: \
             `cosmctl machines power cycle {}` restarts it",
            s.mac, s.mac
        )),
        (PowerAction::PxeOnce, PowerState::Off) => Some(format!(
            "{} boots from the network at its next power-on: `cosmctl machines power on {}`",
            s.mac, s.mac
        )),
        (PowerAction::On, PowerState::Off) | (PowerAction::Off, PowerState::On) => Some(format!(
            "the BMC accepted `{action}` but still reports {}; `cosmctl machines power status {}` \
             reads it again",
            s.state, s.mac
        )),
        _ => None,
    }
}

/// `340 ms`, `2.5 s`.
pub(crate) fn took(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

pub(crate) fn status_table(s: &PowerStatus) -> comfy_table::Table {
    let mut t = table(&["MAC", "DRIVER", "ADDRESS", "STATE", "TOOK"]);
    t.add_row(vec![
        s.mac.to_string(),
        s.settings.driver.clone(),
        dash(Some(&s.settings.address)),
        s.state.to_string(),
        took(s.took_ms),
    ]);
    t
}

/// Rows of `power-settings show`.
pub(crate) fn settings_rows(v: &PowerSettingsView) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("DRIVER", v.driver.clone()),
        ("ADDRESS", dash(Some(&v.address))),
    ];
    if v.driver == "exec" {
        rows.push(("COMMAND", dash(v.command.as_deref())));
    } else {
        rows.push(("USERNAME", dash(v.username.as_deref())));
        rows.push((
            "PASSWORD",
            if v.password_set {
                "set (stored on the appliance, never shown)".to_string()
            } else {
                "not set".to_string()
            },
        ));
    }
    if v.driver == "redfish" {
        let system = match v.system.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => "the only one".to_string(),
        };
        rows.push(("SYSTEM", system));
    }
    rows
}

/// Runs `cosmctl machines power-settings …`.
pub(crate) fn run_settings(ctx: &Ctx, cmd: PowerSettingsCmd) -> Result<()> {
    match cmd {
        PowerSettingsCmd::Set(args) => {
            let source = PasswordSource::choose(
                args.password_file.as_deref(),
                std::env::var(PASSWORD_ENV).ok(),
            );
            let body = args.to_settings(|| read_password(&source))?;
            let reply = ctx
                .api
                .put(&settings_path(&args.mac), &body)
                .map_err(|e| with_hint(e, &args.mac))?;
            ctx.show(reply, |v: PowerSettingsView| {
                print(&format!(
                    "machine {}: power through {} at {}{}",
                    args.mac,
                    v.driver,
                    dash(Some(&v.address)),
                    if v.password_set {
                        "; the password is stored on the appliance and never shown again"
                    } else {
                        ""
                    }
                ))?;
                eprintln!(
                    "check them with `cosmctl machines power status {}`",
                    args.mac
                );
                Ok(())
            })
        }
        PowerSettingsCmd::Show(MacArg { mac }) => {
            let reply = ctx
                .api
                .get(&settings_path(&mac), &[])
                .map_err(|e| with_hint(e, &mac))?;
            ctx.show(reply, |v: PowerSettingsView| {
                print_table(&kv_table(settings_rows(&v)))
            })
        }
        PowerSettingsCmd::Clear(MacArg { mac }) => {
            let reply = ctx.api.delete(&settings_path(&mac))?;
            ctx.done(
                reply,
                format!("cleared the power settings of machine {mac}: it can no longer be powered or fenced by the appliance"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::machines::MachinesCmd;
    use clap::Parser;

    const MAC: &str = "52:54:00:aa:bb:01";

    fn parse(args: &[&str]) -> Result<MachinesCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "machines"], args].concat())?;
        match cli.command {
            Command::Machines(m) => Ok(m),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn set_args(args: &[&str]) -> Box<SetArgs> {
        match parse(&[&["power-settings", "set", MAC], args].concat()).unwrap() {
            MachinesCmd::PowerSettings(PowerSettingsCmd::Set(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The settings `set` would send, with `pw` as the password source's content.
    fn settings(args: &[&str], pw: &str) -> Result<PowerSettings> {
        let pw = pw.to_string();
        set_args(args).to_settings(move || Ok(pw))
    }

    fn usage_error(args: &[&str], pw: &str) -> String {
        let e = settings(args, pw).unwrap_err();
        assert!(e.is::<UsageError>(), "{e:#} is not a usage error");
        e.to_string()
    }

    #[test]
    fn each_power_subcommand_maps_to_its_call() {
        for (word, action) in [
            ("on", Some(PowerAction::On)),
            ("off", Some(PowerAction::Off)),
            ("cycle", Some(PowerAction::Cycle)),
            ("pxe-once", Some(PowerAction::PxeOnce)),
            ("status", None),
        ] {
            let MachinesCmd::Power(cmd) = parse(&["power", word, "525400aabb01"]).unwrap() else {
                panic!("{word}")
            };
            assert_eq!(cmd.action(), action, "{word}");
            assert_eq!(cmd.mac().to_string(), MAC);
        }
        // The body of a POST is the wire's.
        assert_eq!(
            serde_json::to_string(&PowerRequest {
                action: PowerAction::PxeOnce
            })
            .unwrap(),
            r#"{"action":"pxe-once"}"#
        );
        assert!(parse(&["power", "reset", MAC]).is_err());
        assert!(parse(&["power", "on", "not-a-mac"]).is_err());
        assert!(parse(&["power", "on"]).is_err());
    }

    #[test]
    fn redfish_settings() {
        let s = settings(
            &[
                "--driver",
                "redfish",
                "--bmc-url",
                "https://10.0.0.5",
                "--username",
                "admin",
                "--password-file",
                "/dev/null",
                "--system",
                "1",
            ],
            "s3cret",
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "driver": "redfish", "url": "https://10.0.0.5", "username": "admin",
                "password": "s3cret", "system": "1", "insecure_tls": true,
            })
        );
        let s = settings(
            &[
                "--driver",
                "redfish",
                "--bmc-url",
                "https://bmc",
                "--username",
                "a",
                "--verify-tls",
            ],
            "pw",
        )
        .unwrap();
        assert!(matches!(
            s,
            PowerSettings::Redfish {
                insecure_tls: false,
                system: None,
                ..
            }
        ));
    }

    #[test]
    fn ipmi_and_exec_settings() {
        let s = settings(
            &[
                "--driver",
                "ipmi",
                "--host",
                "10.0.0.6",
                "--username",
                "ADMIN",
            ],
            "pw",
        )
        .unwrap();
        assert_eq!(
            s,
            PowerSettings::Ipmi {
                host: "10.0.0.6".into(),
                port: 623,
                username: "ADMIN".into(),
                password: "pw".into()
            }
        );
        let s = settings(
            &[
                "--driver",
                "exec",
                "--command",
                "/usr/local/bin/fence-pdu",
                "--arg",
                "--outlet=7",
                "--arg",
                "-v",
                "--address",
                "pdu1",
                "--timeout-secs",
                "90",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            s,
            PowerSettings::Exec {
                command: vec![
                    "/usr/local/bin/fence-pdu".into(),
                    "--outlet=7".into(),
                    "-v".into()
                ],
                address: Some("pdu1".into()),
                timeout_secs: 90
            }
        );
    }

    #[test]
    fn the_global_url_stays_the_appliances() {
        // `--url` anywhere is the appliance's URL, never the BMC's.
        let cli = Cli::try_parse_from([
            "cosmctl",
            "machines",
            "power-settings",
            "set",
            MAC,
            "--driver",
            "redfish",
            "--bmc-url",
            "https://10.0.0.5",
            "--url",
            "http://appliance:8080",
            "--username",
            "admin",
        ])
        .unwrap();
        assert_eq!(cli.url.as_deref(), Some("http://appliance:8080"));
        let Command::Machines(MachinesCmd::PowerSettings(PowerSettingsCmd::Set(args))) =
            cli.command
        else {
            panic!()
        };
        let s = args.to_settings(|| Ok("pw".into())).unwrap();
        assert!(
            matches!(&s, PowerSettings::Redfish { url, .. } if url == "https://10.0.0.5"),
            "{s:?}"
        );
    }

    #[test]
    fn exec_never_reads_a_password() {
        let args = set_args(&["--driver", "exec", "--command", "/bin/fence"]);
        let s = args
            .to_settings(|| panic!("the exec driver read a password"))
            .unwrap();
        assert_eq!(s.driver_name(), "exec");
    }

    #[test]
    fn wrong_or_missing_flags_name_the_flag() {
        let e = usage_error(
            &[
                "--driver",
                "ipmi",
                "--host",
                "h",
                "--username",
                "u",
                "--bmc-url",
                "https://x",
            ],
            "pw",
        );
        assert_eq!(e, "--driver ipmi does not take --bmc-url");
        let e = usage_error(
            &[
                "--driver",
                "exec",
                "--command",
                "/bin/f",
                "--username",
                "u",
                "--port",
                "1",
            ],
            "",
        );
        assert_eq!(e, "--driver exec does not take --port, --username");
        assert!(
            usage_error(&["--driver", "redfish", "--username", "u"], "pw").contains("--bmc-url")
        );
        assert!(usage_error(&["--driver", "ipmi", "--host", "h"], "pw").contains("--username"));
        assert!(usage_error(&["--driver", "exec"], "").contains("--command"));
        // No password anywhere: the error says where one may come from.
        let e = usage_error(&["--driver", "ipmi", "--host", "h", "--username", "u"], "");
        assert!(
            e.contains("--password-file") && e.contains(PASSWORD_ENV),
            "{e}"
        );
        // The wire's own checks run before anything is sent.
        let e = usage_error(
            &[
                "--driver",
                "redfish",
                "--bmc-url",
                "10.0.0.5",
                "--username",
                "u",
            ],
            "pw",
        );
        assert!(e.contains("not an http"), "{e}");
        let e = usage_error(&["--driver", "exec", "--command", "fence.sh"], "");
        assert!(e.contains("absolute path"), "{e}");
        let e = usage_error(
            &[
                "--driver",
                "ipmi",
                // clap already refuses `--host -o…`; the `=` form gets through to here.
                "--host=-oProxyCommand",
                "--username",
                "u",
            ],
            "pw",
        );
        assert!(e.contains("not a BMC address"), "{e}");
    }

    #[test]
    fn clap_refuses_bad_values_and_a_password_flag() {
        let base = ["power-settings", "set", MAC];
        for bad in [
            &["--driver", "wol"][..],
            &["--driver", "ipmi", "--port", "0"],
            &["--driver", "ipmi", "--port", "70000"],
            &[
                "--driver",
                "exec",
                "--command",
                "/f",
                "--timeout-secs",
                "601",
            ],
            &["--driver", "exec", "--command", "/f", "--timeout-secs", "0"],
            &["--driver", "ipmi", "--password", "s3cret"],
            &[],
        ] {
            assert!(parse(&[&base[..], bad].concat()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_sources() {
        assert_eq!(
            PasswordSource::choose(Some(Path::new("f")), Some("env".into())),
            PasswordSource::File("f".into())
        );
        assert_eq!(
            PasswordSource::choose(None, Some("env".into())),
            PasswordSource::Env("env".into())
        );
        assert_eq!(PasswordSource::choose(None, None), PasswordSource::None);
        assert_eq!(password_from_text("pw\n"), "pw");
        assert_eq!(password_from_text("pw\r\n"), "pw");
        assert_eq!(password_from_text(" p w \n\n"), " p w \n");
        assert_eq!(read_password(&PasswordSource::None).unwrap(), "");
        assert_eq!(
            read_password(&PasswordSource::Env("x\n".into())).unwrap(),
            "x"
        );
        let e = read_password(&PasswordSource::Env("\n".into())).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");

        let dir = std::env::temp_dir().join(format!("cosmctl-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bmc.pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        assert_eq!(
            read_password(&PasswordSource::File(file.clone())).unwrap(),
            "hunter2"
        );
        let missing = read_password(&PasswordSource::File(dir.join("nope"))).unwrap_err();
        assert!(missing.is::<UsageError>());
        assert!(missing.to_string().contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn status(state: PowerState, took_ms: u64) -> PowerStatus {
        PowerStatus {
            mac: MAC.parse().unwrap(),
            settings: PowerSettingsView {
                driver: "ipmi".into(),
                address: "10.0.0.6:623".into(),
                username: Some("ADMIN".into()),
                password_set: true,
                system: None,
                command: None,
            },
            state,
            took_ms,
        }
    }

    #[test]
    fn status_table_shows_the_bmc_answer() {
        let text = status_table(&status(PowerState::Off, 2_450)).to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [MAC, "ipmi", "10.0.0.6:623", "off", "2.5", "s"],
            "{text}"
        );
        assert_eq!(took(340), "340 ms");
        assert_eq!(took(1000), "1.0 s");
    }

    #[test]
    fn notes_after_an_action() {
        let n = after_note(PowerAction::PxeOnce, &status(PowerState::On, 1)).unwrap();
        assert!(n.contains("power cycle"), "{n}");
        let n = after_note(PowerAction::PxeOnce, &status(PowerState::Off, 1)).unwrap();
        assert!(n.contains("power on"), "{n}");
        let n = after_note(PowerAction::Off, &status(PowerState::On, 1)).unwrap();
        assert!(n.contains("still reports on"), "{n}");
        assert_eq!(
            after_note(PowerAction::Off, &status(PowerState::Off, 1)),
            None
        );
        assert_eq!(
            after_note(PowerAction::Cycle, &status(PowerState::On, 1)),
            None
        );
    }

    #[test]
    fn hints_by_error_code() {
        let mac: MacAddr = MAC.parse().unwrap();
        assert!(hint("bmc_auth_failed", &mac)
            .unwrap()
            .contains("power-settings set 52:54:00:aa:bb:01"));
        assert!(hint("bmc_unreachable", &mac).unwrap().contains("show"));
        assert_eq!(hint("bmc_failed", &mac), None);
        assert_eq!(hint("forbidden", &mac), None);
    }

    #[test]
    fn settings_view_never_has_a_password_row_value() {
        let v = PowerSettingsView {
            driver: "redfish".into(),
            address: "https://10.0.0.5".into(),
            username: Some("admin".into()),
            password_set: true,
            system: None,
            command: None,
        };
        let rows = settings_rows(&v);
        let get = |k: &str| rows.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("PASSWORD"),
            Some("set (stored on the appliance, never shown)")
        );
        assert_eq!(get("SYSTEM"), Some("the only one"));
        assert_eq!(get("COMMAND"), None);
        let exec = PowerSettingsView {
            driver: "exec".into(),
            address: String::new(),
            username: None,
            password_set: false,
            system: None,
            command: Some("/usr/local/bin/fence-pdu".into()),
        };
        let rows = settings_rows(&exec);
        assert_eq!(
            rows,
            vec![
                ("DRIVER", "exec".to_string()),
                ("ADDRESS", "-".to_string()),
                ("COMMAND", "/usr/local/bin/fence-pdu".to_string()),
            ]
        );
    }
}
