//! Tenant networks and security groups (issue 14, started): created and deleted through
//! commands; host agents do not reconcile them yet.

use crate::store::{StoreError, Tx};
use cosm_wire::{
    free_vni, CreateNetwork, Network, NetworkName, Remote, SecGroupName, SecurityGroup,
};

/// Records a network: its VNI is the one asked for (if free) or the lowest free one.
pub(super) fn create_network(tx: &mut Tx<'_>, req: &CreateNetwork) -> Result<Network, StoreError> {
    if tx.network(&req.name)?.is_some() {
        return Err(StoreError::conflict(format!(
            "a network named {} already exists",
            req.name
        )));
    }
    let taken = tx.network_vnis()?;
    if let Some(v) = req.vni.filter(|v| taken.contains(v)) {
        return Err(StoreError::Invalid {
            field: "vni",
            message: format!("VNI {v} is used by another network"),
        });
    }
    let vni = match req.vni {
        Some(v) => v,
        None => free_vni(&taken).ok_or_else(|| StoreError::conflict("every VNI is used"))?,
    };
    let net = req.validate(vni).map_err(|e| StoreError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    tx.put_network(&net)?;
    Ok(net)
}

pub(super) fn delete_network(tx: &mut Tx<'_>, name: &NetworkName) -> Result<(), StoreError> {
    let net = tx.network(name)?.ok_or_else(|| StoreError::NotFound {
        what: "network",
        key: name.to_string(),
    })?;
    tx.remove_network(&net)?;
    Ok(())
}

/// Creates or replaces a security group; a rule naming a group needs that group (or
/// itself).
pub(super) fn put_secgroup(
    tx: &mut Tx<'_>,
    g: &SecurityGroup,
) -> Result<SecurityGroup, StoreError> {
    for (i, r) in g.rules.iter().enumerate() {
        r.validate().map_err(|e| StoreError::Invalid {
            field: "rules",
            message: format!("rules[{i}].{}", e),
        })?;
        if let Remote::Group(other) = &r.remote {
            if other != &g.name && tx.secgroup(other)?.is_none() {
                return Err(StoreError::Invalid {
                    field: "rules",
                    message: format!("rules[{i}].remote: there is no security group {other}"),
                });
            }
        }
    }
    tx.put_secgroup(g)?;
    Ok(g.clone())
}

/// Deletes a security group no other group's rule names.
pub(super) fn delete_secgroup(tx: &mut Tx<'_>, name: &SecGroupName) -> Result<(), StoreError> {
    if tx.secgroup(name)?.is_none() {
        return Err(StoreError::NotFound {
            what: "security group",
            key: name.to_string(),
        });
    }
    for g in tx.all_secgroups()? {
        if &g.name != name
            && g.rules
                .iter()
                .any(|r| matches!(&r.remote, Remote::Group(x) if x == name))
        {
            return Err(StoreError::conflict(format!(
                "security group {} has a rule that names {name}: change it first",
                g.name
            )));
        }
    }
    tx.remove_secgroup(name)?;
    Ok(())
}
