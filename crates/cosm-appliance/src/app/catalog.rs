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

/// `NotFound` when a removal found nothing to remove.
fn removed(found: bool, what: &'static str, key: String) -> Result<(), StoreError> {
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound { what, key })
    }
}
