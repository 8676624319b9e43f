//! Roles, role rules, API tokens and image records: the catalogue the machines refer to.

use crate::store::{StoreError, TokenRecord, Tx};
use cosm_wire::{Role, RoleName, RoleSpec, Rule, RuleSpec, Scope, TokenInfo};

pub(super) fn create_role(tx: &mut Tx<'_>, spec: &RoleSpec) -> Result<Role, StoreError> {
    if tx.find_role(&spec.name)?.is_some() {
        return Err(StoreError::conflict(format!(
            "role {} already exists",
            spec.name
        )));
    }
    let role = Role {
        name: spec.name.clone(),
        description: spec.description.clone(),
        builtin: false,
        created_at: tx.at,
        install: None,
    };
    tx.put_role(&role)?;
    Ok(role)
}

pub(super) fn delete_role(tx: &mut Tx<'_>, name: &RoleName) -> Result<(), StoreError> {
    let role = tx.find_role(name)?.ok_or_else(|| StoreError::NotFound {
        what: "role",
        key: name.to_string(),
    })?;
    if role.builtin {
        return Err(StoreError::conflict(format!(
            "role {name} is built in and cannot be deleted"
        )));
    }
    let users: Vec<String> = tx
        .all_machines()?
        .into_iter()
        .filter(|m| m.role.as_ref() == Some(name))
        .map(|m| m.mac.to_string())
        .collect();
    if !users.is_empty() {
        return Err(StoreError::conflict(format!(
            "role {name} is used by {} machine(s) ({}); give them another role first",
            users.len(),
            users.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let rules_using: Vec<u64> = tx
        .all_rules()?
        .into_iter()
        .filter(|r| &r.role == name)
        .map(|r| r.id)
        .collect();
    if !rules_using.is_empty() {
        return Err(StoreError::conflict(format!(
            "role {name} is given by rule(s) {rules_using:?}; delete those rules first"
        )));
    }
    tx.remove_role(name)
}

pub(super) fn create_rule(tx: &mut Tx<'_>, spec: &RuleSpec) -> Result<Rule, StoreError> {
    tx.require_role(&spec.role)?;
    if spec.matches.is_empty() {
        return Err(StoreError::Invalid {
            field: "match",
            message: "a rule needs at least one condition (mac, mac_prefix, min_cpus, …); a rule that matches everything is refused".into(),
        });
    }
    let m = &spec.matches;
    let ranges = [
        (
            m.min_cpus.map(u64::from),
            m.max_cpus.map(u64::from),
            "match.min_cpus",
            "min_cpus is larger than max_cpus",
        ),
        (
            m.min_memory_mib,
            m.max_memory_mib,
            "match.min_memory_mib",
            "min_memory_mib is larger than max_memory_mib",
        ),
        (
            m.min_disks.map(u64::from),
            m.max_disks.map(u64::from),
            "match.min_disks",
            "min_disks is larger than max_disks",
        ),
    ];
    for (lo, hi, field, message) in ranges {
        if matches!((lo, hi), (Some(l), Some(h)) if l > h) {
            return Err(StoreError::Invalid {
                field,
                message: message.into(),
            });
        }
    }
    let rule = Rule {
        id: tx.next_rule_id()?,
        role: spec.role.clone(),
        priority: spec.priority,
        description: spec.description.clone(),
        matches: spec.matches.clone(),
        created_at: tx.at,
    };
    tx.put_rule(&rule)?;
    Ok(rule)
}

pub(super) fn delete_rule(tx: &mut Tx<'_>, id: u64) -> Result<(), StoreError> {
    removed(tx.remove_rule(id)?, "rule", id.to_string())
}

pub(super) fn create_token(
    tx: &mut Tx<'_>,
    name: &str,
    scope: Scope,
    hash: &str,
) -> Result<TokenInfo, StoreError> {
    let info = TokenInfo {
        id: tx.next_token_id()?,
        name: name.to_string(),
        scope,
        created_at: tx.at,
        mac: None,
    };
    tx.put_token(&TokenRecord {
        info: info.clone(),
        hash: hash.to_string(),
    })?;
    Ok(info)
}

pub(super) fn delete_token(tx: &mut Tx<'_>, id: u64) -> Result<(), StoreError> {
    removed(tx.remove_token(id)?, "token", id.to_string())
}

pub(super) fn delete_image(tx: &mut Tx<'_>, name: &str) -> Result<(), StoreError> {
    removed(tx.remove_image(name)?, "image", name.to_string())
}

/// Attaches a role image's manifest: the image must be the file the manifest describes
/// (same size and sha256) and the role must exist.
pub(super) fn set_image_manifest(
    tx: &mut Tx<'_>,
    name: &str,
    manifest: &cosm_wire::ImageManifest,
) -> Result<cosm_wire::Image, StoreError> {
    let mut image = tx.find_image(name)?.ok_or_else(|| StoreError::NotFound {
        what: "image",
        key: name.to_string(),
    })?;
    if !manifest.sha256.eq_ignore_ascii_case(&image.sha256) || manifest.size != image.size_bytes {
        return Err(StoreError::Conflict {
            code: "manifest_mismatch",
            message: format!(
                "the manifest describes a file of {} bytes with sha256 {}, but image {name} has {} bytes with sha256 {}: upload the image this manifest was built with",
                manifest.size, manifest.sha256, image.size_bytes, image.sha256
            ),
        });
    }
    if manifest.raw_size == 0 || manifest.packages.is_empty() || manifest.release.trim().is_empty()
    {
        return Err(StoreError::Invalid {
            field: "manifest",
            message: "a role image's manifest needs release, raw_size and its packages".into(),
        });
    }
    tx.require_role(&manifest.role)?;
    image.os = Some(cosm_wire::OsImage {
        role: manifest.role.clone(),
        release: manifest.release.clone(),
        raw_size: manifest.raw_size,
        kernel: manifest.kernel.clone(),
        packages: manifest.packages.clone(),
    });
    tx.put_image(&image)?;
    Ok(image)
}

/// Sets how a role's machines are installed (`None`: automatic).
pub(super) fn set_install_method(
    tx: &mut Tx<'_>,
    name: &RoleName,
    method: Option<cosm_wire::InstallMethod>,
) -> Result<Role, StoreError> {
    let mut role = tx.find_role(name)?.ok_or_else(|| StoreError::NotFound {
        what: "role",
        key: name.to_string(),
    })?;
    role.install = method;
    tx.put_role(&role)?;
    Ok(role)
}

/// `NotFound` when a removal found nothing to remove.
fn removed(found: bool, what: &'static str, key: String) -> Result<(), StoreError> {
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound { what, key })
    }
}
