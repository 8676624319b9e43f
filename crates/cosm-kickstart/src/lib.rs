//! Kickstart templates per role and OS release, and their rendering (minijinja).
//!
//! The built-in templates (`kickstart/templates/*.ks.j2`) are compiled in; an operator's
//! directory can override any of them by file name. Rendering is pure: the caller passes a
//! [`Machine`] and the [`Site`] settings, and gets the kickstart text or an error that
//! names what is wrong. No network or database I/O here.

use minijinja::Environment;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The roles COSM installs, each a template `<role>.ks.j2`.
pub const ROLES: [&str; 4] = ["center", "web", "host", "storage"];

const BUILTIN: [(&str, &str); 5] = [
    ("base.ks.j2", include_str!("../templates/base.ks.j2")),
    ("center.ks.j2", include_str!("../templates/center.ks.j2")),
    ("web.ks.j2", include_str!("../templates/web.ks.j2")),
    ("host.ks.j2", include_str!("../templates/host.ks.j2")),
    ("storage.ks.j2", include_str!("../templates/storage.ks.j2")),
];

/// An OS release COSM can install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Release {
    Centos7,
    CentosStream9,
    Rocky8,
    Rocky9,
    Alma8,
    Alma9,
}

impl Release {
    pub const ALL: [Release; 6] = [
        Release::Centos7,
        Release::CentosStream9,
        Release::Rocky8,
        Release::Rocky9,
        Release::Alma8,
        Release::Alma9,
    ];

    /// The identifier used in config and on the command line, e.g. `rocky-9`.
    pub fn id(self) -> &'static str {
        match self {
            Release::Centos7 => "centos-7",
            Release::CentosStream9 => "centos-stream-9",
            Release::Rocky8 => "rocky-8",
            Release::Rocky9 => "rocky-9",
            Release::Alma8 => "alma-8",
            Release::Alma9 => "alma-9",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Release::Centos7 => "CentOS 7",
            Release::CentosStream9 => "CentOS Stream 9",
            Release::Rocky8 => "Rocky Linux 8",
            Release::Rocky9 => "Rocky Linux 9",
            Release::Alma8 => "AlmaLinux 8",
            Release::Alma9 => "AlmaLinux 9",
        }
    }

    /// The EL major version: 7, 8 or 9.
    pub fn major(self) -> u8 {
        match self {
            Release::Centos7 => 7,
            Release::Rocky8 | Release::Alma8 => 8,
            Release::CentosStream9 | Release::Rocky9 | Release::Alma9 => 9,
        }
    }

    /// The pykickstart syntax version (`ksvalidator -v`) for this release.
    pub fn ksvalidator_version(self) -> &'static str {
        match self.major() {
            7 => "RHEL7",
            8 => "RHEL8",
            _ => "RHEL9",
        }
    }

    pub fn parse(s: &str) -> Option<Release> {
        Release::ALL.into_iter().find(|r| r.id() == s)
    }
}

/// The hypervisor of a `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    Kvm,
    Xen,
}

/// The machine being installed, as the appliance knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `52:54:00:12:34:56`.
    pub mac: String,
    pub hostname: String,
    /// Static address from the machine's reservation or lease; `None`: DHCP.
    pub ip: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    pub dns: Option<String>,
    /// Install disk from the inventory (e.g. `sda`, `nvme0n1`); `None`: the installer picks.
    pub disk: Option<String>,
}

/// Site-wide settings from the appliance config.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub appliance_url: String,
    /// The machine's install token (single-use, bound to its MAC): the installed agent
    /// enrols with it and the install report is made with it.
    pub install_token: String,
    /// crypt(3) hash (`$6$…`) for root; `None`: root's password is locked (SSH keys only).
    pub root_password_hash: Option<String>,
    pub ssh_keys: Vec<String>,
    pub timezone: String,
    /// `enforcing`, `permissive` or `disabled`.
    pub selinux: String,
    pub firewall: bool,
    /// Install source (`url --url=`); `None` when it comes from `inst.repo` on the kernel line.
    pub repo_url: Option<String>,
    /// Xen packages' repository (CentOS 7 Virt SIG), for `host` roles with Xen.
    pub xen_repo_url: String,
}

/// Why a kickstart cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no kickstart template for role {0:?}: roles with templates are center, web, host, storage (or add {0}.ks.j2 to the templates directory)")]
    UnknownRole(String),
    #[error("{0}")]
    Invalid(String),
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot read the templates directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The templates: built-in ones, each replaced by a file of the same name in the
/// override directory when there is one.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Names taken from the override directory.
    pub overridden: Vec<String>,
}

impl Templates {
    pub fn new(override_dir: Option<&Path>) -> Result<Templates, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut overridden = Vec::new();
        let mut sources: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        if let Some(dir) = override_dir {
            let entries = std::fs::read_dir(dir).map_err(|source| Error::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.ends_with(".ks.j2") {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).map_err(|source| Error::Dir {
                    path: entry.path(),
                    source,
                })?;
                sources.retain(|(n, _)| *n != name);
                sources.push((name.clone(), text));
                overridden.push(name);
            }
        }
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text)
                .map_err(|source| Error::Template { name, source })?;
        }
        overridden.sort();
        Ok(Templates { env, overridden })
    }

    /// The kickstart for `machine` in `role`.
    pub fn render(
        &self,
        role: &str,
        release: Release,
        hypervisor: Hypervisor,
        machine: &Machine,
        site: &Site,
    ) -> Result<String, Error> {
        let name = format!("{role}.ks.j2");
        let tmpl = self
            .env
            .get_template(&name)
            .map_err(|_| Error::UnknownRole(role.to_string()))?;
        if hypervisor == Hypervisor::Xen && release != Release::Centos7 {
            return Err(Error::Invalid(format!(
                "Xen hosts install CentOS 7 only (with the Virt SIG's Xen); {} ships no Xen: use KVM or release centos-7",
                release.name()
            )));
        }
        check_line("hostname", &machine.hostname)?;
        if let Some(h) = &site.root_password_hash {
            check_line("root_password_hash", h)?;
        }
        for k in &site.ssh_keys {
            check_line("ssh key", k)?;
            if k.trim() == "KEYS" {
                return Err(Error::Invalid("an SSH key line cannot be just KEYS".into()));
            }
        }
        if site.install_token.contains('\'') || site.appliance_url.contains('\'') {
            return Err(Error::Invalid(
                "the appliance URL and token must not contain single quotes".into(),
            ));
        }
        #[derive(Serialize)]
        struct ReleaseCtx {
            id: &'static str,
            name: &'static str,
            major: u8,
        }
        let ctx = minijinja::context! {
            role => role,
            release => ReleaseCtx { id: release.id(), name: release.name(), major: release.major() },
            hypervisor => hypervisor,
            machine => machine,
            appliance_url => &site.appliance_url,
            install_token => &site.install_token,
            root_password_hash => &site.root_password_hash,
            ssh_keys => &site.ssh_keys,
            timezone => &site.timezone,
            selinux => &site.selinux,
            firewall => site.firewall,
            firewall_ports => firewall_ports(role),
            repo_url => &site.repo_url,
            xen_repo_url => &site.xen_repo_url,
        };
        tmpl.render(ctx)
            .map_err(|source| Error::Template { name, source })
    }
}

/// Ports a role's firewall opens beyond SSH.
fn firewall_ports(role: &str) -> Vec<&'static str> {
    match role {
        "web" => vec!["80:tcp", "443:tcp"],
        "host" => vec!["16509:tcp", "5900-5999:tcp"],
        "storage" => vec!["2049:tcp", "3260:tcp", "111:tcp", "111:udp", "20048:tcp"],
        "center" => vec!["3306:tcp"],
        _ => vec![],
    }
}

fn check_line(what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.contains(['\n', '\r']) {
        return Err(Error::Invalid(format!("{what} must be one non-empty line")));
    }
    Ok(())
}

/// The bodies of the `%post` and `%onerror` sections of a kickstart, for shellcheck.
pub fn scripts(kickstart: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in kickstart.lines() {
        if let Some((name, body)) = current.as_mut() {
            if line.trim() == "%end" {
                out.push((name.clone(), std::mem::take(body)));
                current = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
        } else if line.starts_with("%post")
            || line.starts_with("%onerror")
            || line.starts_with("%pre")
        {
            let name = line.split_whitespace().next().unwrap_or("").to_string();
            current = Some((name, String::new()));
        }
    }
    out
}
