//! The `redfish` driver: a BMC's Redfish service over HTTPS (or HTTP), basic auth.
//!
//! The machine is one `ComputerSystem` under `/redfish/v1/Systems`: the only member, or the
//! one the settings name by id, name or UUID. Its path is looked up once per driver and
//! kept. This module talks to one BMC only; it does not decide what to do with the answers.

use super::{PowerDriver, PowerError};
use cosm_wire::{PowerAction, PowerState};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long a TCP (and TLS) connection to the BMC may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, answer included. BMCs are slow, but not this slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed per request (sushy-emulator answers `/Systems/<name>` with a 307).
const MAX_REDIRECTS: usize = 5;

/// One ComputerSystem behind a Redfish service.
#[derive(Debug)]
pub struct Redfish {
    /// The service's origin, without a trailing slash (`https://10.0.0.5`).
    url: String,
    username: String,
    password: String,
    system: Option<String>,
    /// The client, or why it could not be built (a TLS backend that does not start).
    client: Result<reqwest::Client, String>,
    /// The system's path (`/redfish/v1/Systems/…`), once found.
    system_path: OnceCell<String>,
}

impl Redfish {
    /// `url` is the service root's origin; `system` the ComputerSystem's id, name or UUID
    /// (the only member when `None`); `insecure_tls` accepts any certificate.
    pub fn new(
        url: &str,
        username: &str,
        password: &str,
        system: Option<String>,
        insecure_tls: bool,
    ) -> Redfish {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .danger_accept_invalid_certs(insecure_tls)
            .build()
            .map_err(|e| chain(&e));
        Redfish {
            url: url.trim_end_matches('/').to_string(),
            username: username.to_string(),
            password: password.to_string(),
            system,
            client,
            system_path: OnceCell::new(),
        }
    }

    fn failed(&self, action: &str, detail: String) -> PowerError {
        PowerError::Failed {
            driver: "redfish",
            action: action.to_string(),
            detail,
        }
    }

    /// An absolute URL for a path the service gave (`/redfish/v1/…`) or an absolute one.
    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.url, path.trim_start_matches('/'))
        }
    }

    /// One request; a 2xx answer's JSON body (`Value::Null` when empty), or the error an
    /// operator can act on.
    async fn call(
        &self,
        action: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, PowerError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| self.failed(action, format!("cannot build an HTTP client: {e}")))?;
        let url = self.absolute(path);
        let mut request = client
            .request(method.clone(), &url)
            .basic_auth(&self.username, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| self.transport(action, &e))?;
        let status = answer.status();
        let text = answer
            .text()
            .await
            .map_err(|e| self.transport(action, &e))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PowerError::AuthFailed {
                address: self.url.clone(),
                username: self.username.clone(),
            });
        }
        if !status.is_success() {
            return Err(self.failed(
                action,
                format!("{method} {url} answered {status}: {}", error_message(&text)),
            ));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            self.failed(
                action,
                format!("{method} {url} answered {status} with a body that is not JSON: {e}"),
            )
        })
    }

    /// A request that got no HTTP answer: nothing listening, no route, TLS, or time.
    fn transport(&self, action: &str, e: &reqwest::Error) -> PowerError {
        if e.is_connect() {
            PowerError::Unreachable {
                address: self.url.clone(),
                detail: format!(
                    "{} (check the URL, that the BMC is powered and on this network)",
                    chain(e)
                ),
            }
        } else if e.is_timeout() {
            PowerError::Timeout {
                driver: "redfish",
                action: action.to_string(),
                secs: CALL_TIMEOUT.as_secs(),
            }
        } else {
            self.failed(action, chain(e))
        }
    }

    /// The system's path, looked up on first use.
    async fn system_path(&self, action: &str) -> Result<&str, PowerError> {
        self.system_path
            .get_or_try_init(|| self.find_system(action))
            .await
            .map(String::as_str)
    }

    async fn find_system(&self, action: &str) -> Result<String, PowerError> {
        let systems = self
            .call(action, Method::GET, "/redfish/v1/Systems", None)
            .await?;
        let members: Vec<String> = systems["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
            .collect();
        let Some(wanted) = &self.system else {
            return match members.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(self.failed(action, "the BMC lists no systems".into())),
                several => Err(self.failed(
                    action,
                    format!(
                        "the BMC lists {} systems ({}): set `system` to one of them",
                        several.len(),
                        several.join(", ")
                    ),
                )),
            };
        };
        if let Some(m) = members
            .iter()
            .find(|m| m.trim_end_matches('/').ends_with(&format!("/{wanted}")))
        {
            return Ok(m.clone());
        }
        // sushy-emulator lists systems by UUID; a name or UUID needs each member's body.
        for m in &members {
            let system = self.call(action, Method::GET, m, None).await?;
            if ["Id", "Name", "UUID"]
                .iter()
                .any(|k| system[k].as_str() == Some(wanted.as_str()))
            {
                return Ok(m.clone());
            }
        }
        Err(self.failed(
            action,
            format!(
                "no system {wanted:?} among the BMC's systems ({})",
                members.join(", ")
            ),
        ))
    }

    async fn system(&self, action: &str) -> Result<(String, Value), PowerError> {
        let path = self.system_path(action).await?.to_string();
        let system = self.call(action, Method::GET, &path, None).await?;
        Ok((path, system))
    }

    async fn reset(
        &self,
        action: &str,
        path: &str,
        system: &Value,
        reset_type: &str,
    ) -> Result<(), PowerError> {
        let target = system["Actions"]["#ComputerSystem.Reset"]["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        self.call(
            action,
            Method::POST,
            &target,
            Some(json!({ "ResetType": reset_type })),
        )
        .await
        .map(|_| ())
    }
}

/// The system's power as fencing must see it: a machine powering off is still on.
fn power_state(system: &Value) -> Result<PowerState, String> {
    match system["PowerState"].as_str() {
        Some("On" | "PoweringOn" | "PoweringOff" | "Paused") => Ok(PowerState::On),
        Some("Off") => Ok(PowerState::Off),
        other => Err(format!("the system reports PowerState {other:?}")),
    }
}

/// The reset that cycles a machine that is on: `PowerCycle` where the BMC offers it.
fn cycle_reset(system: &Value) -> &'static str {
    let offers_power_cycle = system["Actions"]["#ComputerSystem.Reset"]
        ["ResetType@Redfish.AllowableValues"]
        .as_array()
        .is_some_and(|v| v.iter().any(|t| t == "PowerCycle"));
    if offers_power_cycle {
        "PowerCycle"
    } else {
        "ForceRestart"
    }
}

/// The Redfish error message of an error body, or the body itself (cut).
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["@Message.ExtendedInfo"][0]["Message"]
            .as_str()
            .or_else(|| v["error"]["message"].as_str())
            .map(str::to_string)
    });
    message.unwrap_or_else(|| {
        let body = body.trim();
        if body.is_empty() {
            "(no body)".into()
        } else {
            body.chars().take(300).collect()
        }
    })
}

/// An error with its sources, `outer: inner: …` (reqwest's own message names only the URL).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[async_trait::async_trait]
impl PowerDriver for Redfish {
    fn name(&self) -> &'static str {
        "redfish"
    }

    async fn status(&self) -> Result<PowerState, PowerError> {
        let (_, system) = self.system("status").await?;
        power_state(&system).map_err(|e| self.failed("status", e))
    }

    async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        let name = action.as_str();
        let (path, system) = self.system(name).await?;
        match action {
            PowerAction::On => self.reset(name, &path, &system, "On").await,
            PowerAction::Off => self.reset(name, &path, &system, "ForceOff").await,
            PowerAction::Cycle => {
                let state = power_state(&system).map_err(|e| self.failed(name, e))?;
                let reset = match state {
                    PowerState::Off => "On",
                    PowerState::On => cycle_reset(&system),
                };
                self.reset(name, &path, &system, reset).await
            }
            PowerAction::PxeOnce => self
                .call(
                    name,
                    Method::PATCH,
                    &path,
                    Some(json!({"Boot": {
                        "BootSourceOverrideTarget": "Pxe",
                        "BootSourceOverrideEnabled": "Once"
                    }})),
                )
                .await
                .map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powering_off_counts_as_on_until_off() {
        let s = |state: &str| power_state(&json!({ "PowerState": state }));
        assert_eq!(s("On"), Ok(PowerState::On));
        assert_eq!(s("PoweringOn"), Ok(PowerState::On));
        assert_eq!(s("PoweringOff"), Ok(PowerState::On));
        assert_eq!(s("Off"), Ok(PowerState::Off));
        assert!(power_state(&json!({})).unwrap_err().contains("None"));
    }

    #[test]
    fn cycle_prefers_power_cycle_when_offered() {
        let with = |values: Value| {
            json!({"Actions": {"#ComputerSystem.Reset": {
                "ResetType@Redfish.AllowableValues": values}}})
        };
        assert_eq!(
            cycle_reset(&with(json!(["On", "ForceOff"]))),
            "ForceRestart"
        );
        assert_eq!(
            cycle_reset(&with(json!(["On", "PowerCycle"]))),
            "PowerCycle"
        );
        assert_eq!(cycle_reset(&json!({})), "ForceRestart");
    }

    #[test]
    fn error_messages_come_from_the_redfish_error_body() {
        let extended = r#"{"error":{"code":"Base.1.0.GeneralError","message":"general",
            "@Message.ExtendedInfo":[{"Message":"The reset type is not supported."}]}}"#;
        assert_eq!(error_message(extended), "The reset type is not supported.");
        assert_eq!(
            error_message(r#"{"error":{"message":"Bad ResetType"}}"#),
            "Bad ResetType"
        );
        assert_eq!(error_message("  "), "(no body)");
        assert_eq!(error_message("<html>oops</html>"), "<html>oops</html>");
    }
}
