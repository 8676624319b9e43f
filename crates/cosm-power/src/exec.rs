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
            // A group of its own, so a timeout kills what the command started too (a
            // script's `sleep`, an ssh), not only the script.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
        let group = child.id();
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| failed(format!("{program}: {e}")))?,
            Err(_) => {
                kill_group(group);
                return Err(PowerError::Timeout {
                    driver: "exec",
                    action: action.to_string(),
                    secs: self.timeout.as_secs(),
                });
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

/// SIGKILLs the process group `pgid` leads (the fence command's, see `process_group(0)`).
fn kill_group(pgid: Option<u32>) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        // ESRCH: the group is already gone.
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pgid, error = %e, "cannot kill a timed-out fence command's group");
        }
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
        // Through sh rather than exec'd itself: another test's fork may still hold the
        // script open for writing, and exec would then fail with ETXTBSY.
        vec!["/bin/sh".into(), path.display().to_string()]
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

    /// Whether `pid` is gone (or a zombie, which is gone for our purposes).
    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_timed_out_command_leaves_no_child_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            &format!("sleep 300 & echo $! > {}/child\nwait", dir.path().display()),
        );
        // Long enough for the script to have started its child and written its PID on a
        // busy machine, far below the child's 300 s.
        let d = Exec::new(cmd, mac(), None, Duration::from_secs(3));
        let e = d.act(PowerAction::Off).await.unwrap_err();
        assert!(matches!(e, PowerError::Timeout { .. }), "{e}");
        let child: u32 = std::fs::read_to_string(dir.path().join("child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(child) {
            assert!(
                std::time::Instant::now() < deadline,
                "the fence command's `sleep` (pid {child}) outlived its timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_hung_command_times_out_and_garbage_status_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            r#"case "$1" in status) echo maybe;; *) sleep 30;; esac"#,
        );
        let d = Exec::new(cmd.clone(), mac(), None, Duration::from_millis(500));
        let e = d.act(PowerAction::Off).await.unwrap_err();
        assert!(matches!(e, PowerError::Timeout { .. }), "{e}");
        // The status answer is garbage, not late: given all the time it needs.
        let d = Exec::new(cmd, mac(), None, Duration::from_secs(10));
        let e = d.status().await.unwrap_err().to_string();
        assert!(e.contains("\"maybe\""), "{e}");
    }
}
