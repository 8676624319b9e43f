//! The `ipmi` driver: `ipmitool -I lanplus` (IPMI v2.0 over RMCP+, UDP) against one BMC.
//!
//! The password goes to ipmitool in `IPMI_PASSWORD` (`-E`), never on its command line,
//! where any user of the machine could read it. ipmitool runs with `-v`: its extra
//! messages are what tells a wrong password from a BMC that does not answer.

use super::{PowerDriver, PowerError};
use cosm_wire::{PowerAction, PowerState};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// ipmitool's own per-packet timeout (`-N`, seconds), retried once (`-R 1`): a BMC that
/// does not answer fails a status read in about 4 s instead of ipmitool's default 20 s.
const STATUS_PACKET_TIMEOUT: &str = "2";
/// Actions get longer: virtualbmc answers `power off` only once libvirt destroyed the
/// domain (1.8–2 s measured), and ipmitool gives up on a command whose answer is late.
const ACTION_PACKET_TIMEOUT: &str = "5";
const RETRIES: &str = "1";
/// How long one ipmitool run may take before it is killed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A cycle emulated as off then on waits this long for the BMC to report off.
const OFF_WAIT: Duration = Duration::from_secs(30);

/// One BMC reached through ipmitool.
#[derive(Debug)]
pub struct Ipmi {
    host: String,
    port: u16,
    username: String,
    password: String,
}

impl Ipmi {
    pub fn new(host: &str, port: u16, username: &str, password: &str) -> Ipmi {
        Ipmi {
            host: host.to_string(),
            port,
            username: username.to_string(),
            password: password.to_string(),
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs `ipmitool … args`; its stdout on success.
    async fn run(&self, action: &str, args: &[&str]) -> Result<String, PowerError> {
        let mut cmd = tokio::process::Command::new("ipmitool");
        cmd.args(["-v", "-I", "lanplus", "-H", &self.host, "-p"])
            .arg(self.port.to_string())
            .args(["-U", &self.username, "-E"])
            .arg("-N")
            .arg(if action == "status" {
                STATUS_PACKET_TIMEOUT
            } else {
                ACTION_PACKET_TIMEOUT
            })
            .args(["-R", RETRIES])
            .args(args)
            .env("IPMI_PASSWORD", &self.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| PowerError::Failed {
            driver: "ipmi",
            action: action.to_string(),
            detail: format!(
                "cannot run ipmitool: {e} (install the Debian package ipmitool on the appliance)"
            ),
        })?;
        let out = match tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| PowerError::Failed {
                driver: "ipmi",
                action: action.to_string(),
                detail: format!("ipmitool: {e}"),
            })?,
            Err(_) => {
                return Err(PowerError::Timeout {
                    driver: "ipmi",
                    action: action.to_string(),
                    secs: CALL_TIMEOUT.as_secs(),
                })
            }
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(
            &self.address(),
            &self.username,
            action,
            &stderr,
            &out.status.to_string(),
        ))
    }

    async fn power(&self, action: &str, verb: &str) -> Result<(), PowerError> {
        self.run(action, &["power", verb]).await.map(|_| ())
    }

    /// `power cycle`, or off, wait for off, on where the BMC refuses it (virtualbmc does;
    /// real BMCs refuse it for a machine that is off, which is why that case is `on`).
    async fn cycle(&self) -> Result<(), PowerError> {
        if self.status().await? == PowerState::Off {
            return self.power("cycle", "on").await;
        }
        match self.power("cycle", "cycle").await {
            Err(PowerError::Failed { detail, .. })
                if detail.contains("Invalid data field in request") =>
            {
                tracing::debug!(bmc = %self.address(), "the BMC refuses power cycle: off, then on");
            }
            other => return other,
        }
        self.power("cycle", "off").await?;
        let start = Instant::now();
        while self.status().await? != PowerState::Off {
            if start.elapsed() > OFF_WAIT {
                return Err(PowerError::Failed {
                    driver: "ipmi",
                    action: "cycle".into(),
                    detail: format!(
                        "the BMC refuses `power cycle`, and after `power off` it still \
                         reported on for {} s",
                        OFF_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.power("cycle", "on").await
    }
}

/// What ipmitool's stderr says went wrong.
///
/// Measured against virtualbmc 3.3 with ipmitool 1.8.19 (`-v`): a wrong password prints
/// `RAKP 2 HMAC is invalid`; an unknown user gets no answer to RAKP 1 (`no response from
/// RAKP 1 message`; real BMCs answer `unauthorized name`); a port nothing answers on prints
/// `Get Auth Capabilities error`; an address with no route `Could not open socket`. All of
/// them end with `Unable to establish IPMI v2 / RMCP+ session`.
fn classify(address: &str, username: &str, action: &str, stderr: &str, status: &str) -> PowerError {
    if stderr.contains("RAKP") || stderr.contains("unauthorized name") {
        return PowerError::AuthFailed {
            address: address.to_string(),
            username: username.to_string(),
        };
    }
    if stderr.contains("Get Auth Capabilities error")
        || stderr.contains("Could not open socket")
        || stderr.contains("No response from remote controller")
    {
        return PowerError::Unreachable {
            address: address.to_string(),
            detail: "no IPMI answer over RMCP+ (check the host and port, that IPMI over LAN \
                     is enabled on the BMC, and that UDP reaches it)"
                .into(),
        };
    }
    PowerError::Failed {
        driver: "ipmi",
        action: action.to_string(),
        detail: format!("ipmitool exited with {status}: {}", meaningful(stderr)),
    }
}

/// ipmitool's stderr without the lines `-v` adds on every run.
fn meaningful(stderr: &str) -> String {
    const NOISE: [&str; 6] = [
        "Loading IANA PEN Registry",
        "Using best available cipher suite",
        "Running Get VSO Capabilities",
        "Invalid completion code received: Invalid command",
        "Discovered IPMB address",
        "Get Device ID command failed",
    ];
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !NOISE.iter().any(|n| l.starts_with(n)))
        .collect();
    let text = lines.join("; ");
    if text.is_empty() {
        "(nothing on stderr)".into()
    } else {
        text.chars().take(400).collect()
    }
}

/// `Chassis Power is on` / `off`.
fn parse_status(stdout: &str) -> Option<PowerState> {
    let line = stdout.lines().find(|l| l.contains("Chassis Power is"))?;
    match line.rsplit(' ').next()?.trim() {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => None,
    }
}

#[async_trait::async_trait]
impl PowerDriver for Ipmi {
    fn name(&self) -> &'static str {
        "ipmi"
    }

    async fn status(&self) -> Result<PowerState, PowerError> {
        let out = self.run("status", &["power", "status"]).await?;
        parse_status(&out).ok_or_else(|| PowerError::Failed {
            driver: "ipmi",
            action: "status".into(),
            detail: format!(
                "ipmitool printed {:?}, not `Chassis Power is on|off`",
                out.trim()
            ),
        })
    }

    async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        match action {
            PowerAction::On => self.power("on", "on").await,
            PowerAction::Off => self.power("off", "off").await,
            PowerAction::Cycle => self.cycle().await,
            // Without `options=persistent` the boot device applies to the next boot only.
            PowerAction::PxeOnce => self
                .run("pxe-once", &["chassis", "bootdev", "pxe"])
                .await
                .map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_status("Chassis Power is unknown\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn stderr_tells_credentials_from_silence() {
        let c = |stderr: &str| classify("10.0.0.5:623", "admin", "status", stderr, "exit 1");
        let wrong_password =
            "Loading IANA PEN Registry...\nUsing best available cipher suite 3\n\n\
            > RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(c(wrong_password), PowerError::AuthFailed { .. }));
        let silence = "Loading IANA PEN Registry...\nGet Auth Capabilities error\n\
            Error issuing Get Channel Authentication Capabilities request\n\
            Error: Unable to establish IPMI v2 / RMCP+ session\n";
        let e = c(silence);
        assert!(matches!(e, PowerError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("10.0.0.5:623"), "{e}");
        let refused = "Loading IANA PEN Registry...\nUsing best available cipher suite 3\n\n\
            Running Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\n\
            Invalid completion code received: Invalid command\nDiscovered IPMB address 0x0\n\
            Set Chassis Power Control to Cycle failed: Invalid data field in request\n";
        let e = c(refused).to_string();
        assert_eq!(
            e,
            "ipmi status failed: ipmitool exited with exit 1: Set Chassis Power Control to \
             Cycle failed: Invalid data field in request"
        );
    }
}
