//! The install side of the configuration: boot files and scripts, and kickstarts.

use super::file;
use super::{BootSettings, DhcpSettings, KickstartSettings};
use cosm_kickstart::{Release, Templates};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A refused key and why.
pub(super) type KeyError = (String, String);

pub(super) fn key_error(key: &str, message: String) -> KeyError {
    (key.to_string(), message)
}

pub(super) fn boot_settings(
    b: &file::Boot,
    dhcp: Option<&DhcpSettings>,
    api_listen: SocketAddr,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Result<BootSettings, KeyError> {
    if !(1..=20).contains(&b.retries) {
        return Err(key_error(
            "boot.retries",
            format!("{} is outside 1..=20", b.retries),
        ));
    }
    let appliance_url = b
        .appliance_url
        .clone()
        .or_else(|| dhcp.as_ref().map(|d| d.core.boot.http_base.clone()))
        .unwrap_or_else(|| format!("http://{api_listen}"))
        .trim_end_matches('/')
        .to_string();
    if !appliance_url.starts_with("http://") && !appliance_url.starts_with("https://") {
        return Err(key_error(
            "boot.appliance_url",
            format!("{appliance_url:?} is not an http:// URL"),
        ));
    }
    // Boot scripts and kickstarts send machines to this URL: an unspecified address
    // (api.listen = 0.0.0.0:8080 with nothing better) would send them nowhere.
    let host = appliance_url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
        .unwrap_or("");
    let unspecified = host
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host)
        .trim_matches(['[', ']']);
    if matches!(unspecified, "0.0.0.0" | "::" | "") {
        return Err(key_error(
            "boot.appliance_url",
            format!(
                "{appliance_url:?} is not an address machines can reach (it comes from {}); set boot.appliance_url to the address machines reach this appliance at, e.g. http://192.0.2.1:8080",
                if b.appliance_url.is_some() { "boot.appliance_url" } else { "api.listen" }
            ),
        ));
    }
    if b.kernel_args.contains(['\n', '\r']) {
        return Err(key_error("boot.kernel_args", "must be one line".into()));
    }
    Ok(BootSettings {
        dir: rel(&b.dir),
        ipxe_dir: rel(&b.ipxe_dir),
        ramdisk_dir: rel(&b.ramdisk_dir),
        agent_dir: rel(&b.agent_dir),
        kernel_args: b.kernel_args.clone(),
        retries: b.retries,
        appliance_url,
    })
}

pub(super) fn kickstart_settings(
    k: file::Kickstart,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Result<KickstartSettings, KeyError> {
    let release = Release::parse(&k.release).ok_or_else(|| {
        key_error(
            "kickstart.release",
            format!(
                "{:?} is not one of {}",
                k.release,
                Release::ALL.map(|r| r.id()).join(", ")
            ),
        )
    })?;
    let templates_dir = k.templates_dir.as_deref().map(rel);
    let templates = Templates::new(templates_dir.as_deref())
        .map_err(|e| key_error("kickstart.templates_dir", e.to_string()))?;
    if !matches!(k.selinux.as_str(), "enforcing" | "permissive" | "disabled") {
        return Err(key_error(
            "kickstart.selinux",
            format!("{:?} is not enforcing, permissive or disabled", k.selinux),
        ));
    }
    if let Some(h) = &k.root_password_hash {
        if !h.starts_with('$') || h.contains(char::is_whitespace) {
            return Err(key_error(
                "kickstart.root_password_hash",
                "must be a crypt(3) hash such as $6$salt$… (make one with `openssl passwd -6`)"
                    .into(),
            ));
        }
    }
    for (i, key) in k.ssh_keys.iter().enumerate() {
        if key.contains(['\n', '\r']) || !key.starts_with("ssh-") && !key.starts_with("ecdsa-") {
            return Err(key_error(
                &format!("kickstart.ssh_keys[{i}]"),
                "must be one public key line (ssh-ed25519 AAAA… comment)".into(),
            ));
        }
    }
    for (key, value) in [
        ("kickstart.installer_args", &k.installer_args),
        ("kickstart.timezone", &k.timezone),
    ] {
        if value.contains(['\n', '\r', '$', '#']) {
            return Err(key_error(key, "must be one line without $ or #".into()));
        }
    }
    Ok(KickstartSettings {
        release,
        templates: std::sync::Arc::new(templates),
        templates_dir,
        installer_kernel: k
            .installer_kernel
            .unwrap_or_else(|| format!("{}-vmlinuz", release.id())),
        installer_initrd: k
            .installer_initrd
            .unwrap_or_else(|| format!("{}-initrd.img", release.id())),
        root_password_hash: k.root_password_hash,
        ssh_keys: k.ssh_keys,
        timezone: k.timezone,
        selinux: k.selinux,
        firewall: k.firewall,
        repo_url: k.repo_url,
        installer_args: k.installer_args,
        xen_roles: k.xen_roles,
        xen_repo_url: k.xen_repo_url,
    })
}
