//! The `exec` driver: an operator's fence command.

use super::{PowerDriver, PowerError};
use cosm_wire::{MacAddr, PowerAction, PowerState};
use std::process::Stdio;
use std::time::Duration;

/// Runs `command… ACTION` with `COSM_POWER_ACTION`, `COSM_MACHINE_MAC` and
/// `COSM_MACHINE_ADDRESS` in its environment. Exit 0 is success; for `status` its stdout's
/// first word is `on` or `off`. Killed at the timeout.
#[derive(Debug)]
pub struct Exec {
    command: Vec<String>,
    mac: MacAddr,
    address: Option<String>,
    timeout: Duration,
}

impl Exec {
    pub fn new(
        command: Vec<String>,
        mac: MacAddr,
        address: Option<String>,
        timeout: Duration,
    ) -> Exec {
        Exec {
            command,
            mac,
            address,
            timeout,
        }
    }

    async fn run(&self, action: &str) -> Result<String, PowerError> {
        let failed = |detail: String| PowerError::Failed {
            driver: "exec",
            action: action.to_string(),
            detail,
        };
        let Some((program, args)) = self.command.split_first() else {
            return Err(failed("no fence command is set".into()));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(action)
            .env("COSM_POWER_ACTION", action)
            .env("COSM_MACHINE_MAC", self.mac.to_string())
            .env(
                "COSM_MACHINE_ADDRESS",
                self.address.clone().unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| failed(format!("{program}: {e}")))?,
            Err(_) => {
                return Err(PowerError::Timeout {
                    driver: "exec",
                    action: action.to_string(),
                    secs: self.timeout.as_secs(),
                })
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(400)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            return Err(failed(format!(
                "{program} exited with {}: {tail}",
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[async_trait::async_trait]
impl PowerDriver for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    async fn status(&self) -> Result<PowerState, PowerError> {
        let out = self.run("status").await?;
        match out
            .split_whitespace()
            .next()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("on") => Ok(PowerState::On),
            Some("off") => Ok(PowerState::Off),
            _ => Err(PowerError::Failed {
                driver: "exec",
                action: "status".into(),
                detail: format!(
                    "the fence command printed {:?}, not `on` or `off`",
                    out.trim()
                ),
            }),
        }
    }

    async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        self.run(action.as_str()).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fence script that keeps the power state in a file next to it.
    fn script(dir: &std::path::Path, body: &str) -> Vec<String> {
        let path = dir.join("fence.sh");
        std::fs::write(
            &path,
            format!("#!/bin/sh\nSTATE={}/state\n{body}\n", dir.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![path.display().to_string()]
    }

    fn mac() -> MacAddr {
        MacAddr::new([2, 0, 0, 0, 0, 1])
    }

    #[tokio::test]
    async fn fence_powers_off_and_confirms() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state"), "on").unwrap();
        let cmd = script(
            dir.path(),
            r#"case "$1" in
  status) cat "$STATE";;
  off) [ "$COSM_MACHINE_MAC" = 02:00:00:00:00:01 ] && echo off > "$STATE";;
  on) echo on > "$STATE";;
  *) echo "unknown $1" >&2; exit 2;;
esac"#,
        );
        let d = Exec::new(cmd, mac(), None, Duration::from_secs(5));
        assert_eq!(d.status().await.unwrap(), PowerState::On);
        super::super::fence(&d, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(d.status().await.unwrap(), PowerState::Off);
        let e = d.act(PowerAction::PxeOnce).await.unwrap_err().to_string();
        assert!(e.contains("unknown pxe-once"), "{e}");
    }

    #[tokio::test]
    async fn an_off_that_does_not_take_is_not_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            r#"case "$1" in status) echo on;; *) exit 0;; esac"#,
        );
        let d = Exec::new(cmd, mac(), None, Duration::from_secs(5));
        let e = super::super::fence(&d, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PowerError::NotConfirmed {
                    state: PowerState::On,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hung_command_times_out_and_garbage_status_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            r#"case "$1" in status) echo maybe;; *) sleep 30;; esac"#,
        );
        let d = Exec::new(cmd, mac(), None, Duration::from_millis(500));
        let e = d.act(PowerAction::Off).await.unwrap_err();
        assert!(matches!(e, PowerError::Timeout { .. }), "{e}");
        let e = d.status().await.unwrap_err().to_string();
        assert!(e.contains("\"maybe\""), "{e}");
    }
}
