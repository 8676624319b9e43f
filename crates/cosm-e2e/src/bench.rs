//! What the benchmark binaries share: the figures they collect and print as one table,
//! and what they read of the processes they started.

/// One line of a benchmark's final table: what was measured, and the figure.
#[derive(Debug)]
pub struct Figure {
    pub what: String,
    pub value: String,
}

/// Adds a figure, and prints it at once too, so a run cut short still shows what it
/// measured.
pub fn figure(out: &mut Vec<Figure>, what: impl Into<String>, value: impl Into<String>) {
    let f = Figure {
        what: what.into(),
        value: value.into(),
    };
    eprintln!("  {}: {}", f.what, f.value);
    out.push(f);
}

/// Prints the final table under `title`, then `left`: the processes the run started that
/// are still there (none, if it cleaned up), described by `started`.
pub fn print_report(title: &str, figures: &[Figure], started: &str, left: &[String]) {
    println!();
    println!("{title}; figures are noisy: a shared 2-core machine");
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["measured", "figure"]);
    for f in figures {
        table.add_row([f.what.as_str(), f.value.as_str()]);
    }
    println!("{table}");
    if left.is_empty() {
        println!("all {started} this run started are gone");
    } else {
        println!("LEFT RUNNING: {}", left.join(", "));
    }
}

/// Whether a process is still there (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Polls `done` every `every` until it holds (a poll that fails, e.g. while the appliance
/// restarts, counts as not yet); fails naming `what` after `timeout`.
pub async fn poll_until<F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut done: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done().await.unwrap_or(false) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what} did not happen within {timeout:?}");
        }
        tokio::time::sleep(every).await;
    }
}
