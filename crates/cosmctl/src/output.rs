//! How results reach the user: the command context ([`Ctx`]) that chooses between tables
//! and raw JSON, borderless comfy-table tables, and small formatters for sizes and times.

use crate::api::{Api, Reply};
use anyhow::{Context, Result};
use comfy_table::{presets, ContentArrangement, Table};
pub(crate) use cosm_wire::human_bytes;
use cosm_wire::Timestamp;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Display;
use std::io::Write;

/// What every command handler gets: the API client and the output mode.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) api: Api,
    /// `--json`: print the appliance's JSON instead of tables and messages.
    pub(crate) json: bool,
}

impl Ctx {
    /// Shows a reply: its JSON, pretty, with `--json`; otherwise decodes it as `T` and hands
    /// it to `human`.
    pub(crate) fn show<T: DeserializeOwned>(
        &self,
        reply: Reply,
        human: impl FnOnce(T) -> Result<()>,
    ) -> Result<()> {
        if self.json {
            print(&pretty_json(&reply.body)?)
        } else {
            human(reply.parse()?)
        }
    }

    /// Reports a reply without a body (a deletion): `message` on stdout, or on stderr with
    /// `--json` so that stdout stays empty of non-JSON text.
    pub(crate) fn done(&self, reply: Reply, message: impl Display) -> Result<()> {
        if self.json {
            if !reply.body.trim().is_empty() {
                print(&pretty_json(&reply.body)?)?;
            }
            eprintln!("{message}");
            Ok(())
        } else {
            print(&message.to_string())
        }
    }
}

/// Writes one line to stdout. A closed pipe (`cosmctl machines list | head`) is not an error.
pub(crate) fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// A borderless table with the given column headers, wrapped to the terminal's width.
pub(crate) fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.to_vec());
    for col in t.column_iter_mut() {
        col.set_padding((0, 2));
    }
    t
}

/// Prints a table without the trailing blanks comfy-table pads lines with.
pub(crate) fn print_table(t: &Table) -> Result<()> {
    let text: Vec<String> = t.lines().map(|l| l.trim_end().to_string()).collect();
    print(&text.join("\n"))
}

/// A key/value table (no header row).
pub(crate) fn kv_table(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    for col in t.column_iter_mut() {
        col.set_padding((0, 2));
    }
    t
}

/// The value's text, or `-` when absent or blank.
pub(crate) fn dash<T: Display>(v: Option<T>) -> String {
    match v.map(|v| v.to_string()) {
        Some(s) if !s.trim().is_empty() => s,
        _ => "-".to_string(),
    }
}

/// The name a wire enum has in JSON (`state_changed`, `admin`, …).
pub(crate) fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as GiB with one decimal, e.g. `15.6`.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GIB)
}

/// A timestamp to the second, UTC: `2025-11-25 22:13:59Z`.
pub(crate) fn time(t: Timestamp) -> String {
    let s = t.to_string(); // 2025-11-25T22:13:59.123Z
    match s.get(..19) {
        Some(head) => format!("{}Z", head.replacen('T', " ", 1)),
        None => s,
    }
}

/// How long ago `then` was, seen from `now`, e.g. `3h12m ago`.
pub(crate) fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_millis().saturating_sub(then.as_millis()) / 1000;
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 60 {
        format!("{secs}s ago")
    } else if m < 60 {
        format!("{m}m ago")
    } else if h < 24 {
        format!("{h}h{:02}m ago", m % 60)
    } else {
        format!("{d}d{:02}h ago", h % 24)
    }
}

/// Pretty-prints a JSON answer, keeping the server's key order (serde_json's
/// `preserve_order` feature makes `Value` keep insertion order).
pub(crate) fn pretty_json(text: &str) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(text).context("the appliance answered with invalid JSON")?;
    Ok(serde_json::to_string_pretty(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_matches_serde_json_and_keeps_order() {
        let compact =
            r#"{"a":1,"b":[true,null,"x\"y,{}:[]"],"c":{},"d":[],"e":{"f":[ ]},"g":-1.5}"#;
        let value: serde_json::Value = serde_json::from_str(compact).unwrap();
        assert_eq!(
            pretty_json(compact).unwrap(),
            serde_json::to_string_pretty(&value).unwrap()
        );
        let out = pretty_json(r#"{"zeta": 1, "alpha": 2}"#).unwrap();
        assert_eq!(out, "{\n  \"zeta\": 1,\n  \"alpha\": 2\n}");
        assert!(pretty_json("{oops").is_err());
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(gib(16 * (1 << 30)), "16.0");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_000_204_886_016), "931.5 GiB");
        assert_eq!(
            time(Timestamp::from_millis(1_764_108_839_123)),
            "2025-11-25 22:13:59Z"
        );
        let t = Timestamp::from_millis(1_000_000_000);
        let later = |s: u64| Timestamp::from_millis(1_000_000_000 + s * 1000);
        assert_eq!(age(t, later(5)), "5s ago");
        assert_eq!(age(t, later(125)), "2m ago");
        assert_eq!(age(t, later(3 * 3600 + 12 * 60)), "3h12m ago");
        assert_eq!(age(t, later(2 * 86_400 + 3600)), "2d01h ago");
        assert_eq!(age(later(10), t), "0s ago");
        assert_eq!(dash(None::<&str>), "-");
        assert_eq!(dash(Some("")), "-");
        assert_eq!(dash(Some("web")), "web");
    }
}
