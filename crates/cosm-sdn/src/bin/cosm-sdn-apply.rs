//! One reconcile pass of the Linux driver, for tests and for trying the driver by hand:
//! `cosm-sdn-apply --vtep 192.0.2.1 [--dev eth0] desired.json` reads a `HostNetworks`
//! (JSON), reconciles the current network namespace to it once, and prints the changes
//! as a JSON array of strings. Run it under `ip netns exec` to act on another namespace.

use anyhow::Context;
use cosm_sdn::{LinuxDriver, SdnDriver, Underlay};

fn usage() -> anyhow::Error {
    anyhow::anyhow!("usage: cosm-sdn-apply --vtep IPV4 [--dev IFNAME] DESIRED.json")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut vtep = None;
    let mut dev = None;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vtep" => vtep = Some(args.next().ok_or_else(usage)?),
            "--dev" => dev = Some(args.next().ok_or_else(usage)?),
            _ if file.is_none() && !a.starts_with('-') => file = Some(a),
            _ => return Err(usage()),
        }
    }
    let vtep = vtep
        .ok_or_else(usage)?
        .parse()
        .context("--vtep is not an IPv4 address")?;
    let file = file.ok_or_else(usage)?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    let desired: cosm_wire::HostNetworks =
        serde_json::from_str(&text).with_context(|| format!("{file} is not a HostNetworks"))?;
    let driver = LinuxDriver::new(Underlay { vtep, dev })?;
    let changes = driver.reconcile(&desired).await?;
    println!("{}", serde_json::to_string(&changes)?);
    Ok(())
}
