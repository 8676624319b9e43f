//! Roles and role rules.

use super::engine::{decode, encode, Page, Store, StoreCommand, Tx};
use super::schema::{ROLES, RULES, RULE_ORDER};
use super::StoreError;
use cosm_wire::{Role, RoleName, Rule, Timestamp};
use redb::{ReadableTable, WriteTransaction};

/// The roles a new store starts with; they cannot be deleted.
const SEED_ROLES: [(&str, &str); 4] = [
    (
        "center",
        "Management node: runs the control plane and its database",
    ),
    ("web", "Portal and REST API front end"),
    ("host", "Hypervisor (KVM or Xen) running virtual machines"),
    (
        "storage",
        "Shared storage: images, virtual disks, metadata (NFS, iSCSI)",
    ),
];

/// Writes the built-in roles into a new store.
pub(super) fn seed(txn: &WriteTransaction, now: Timestamp) -> Result<(), StoreError> {
    let mut roles = txn.open_table(ROLES)?;
    for (name, description) in SEED_ROLES {
        let role = Role {
            name: name.parse().expect("seed role names are valid"),
            description: description.to_string(),
            builtin: true,
            created_at: now,
            install: None,
        };
        roles.insert(name, encode(&role).as_slice())?;
    }
    Ok(())
}

impl<C: StoreCommand> Store<C> {
    pub fn roles(&self) -> Result<Vec<Role>, StoreError> {
        self.all(ROLES)
    }

    /// One page of roles by name, after the name `after`.
    pub fn roles_page(&self, after: Option<&str>, limit: usize) -> Result<Page<Role>, StoreError> {
        self.page(ROLES, after, limit, |_: &Role| true)
    }

    /// One page of rules in evaluation order, after the rule at `after` (its priority and
    /// id): a range of the order index, each record found by its id.
    pub fn rules_page(
        &self,
        after: Option<(i32, u64)>,
        limit: usize,
    ) -> Result<Page<Rule>, StoreError> {
        use std::ops::Bound;
        let r = self.db.begin_read()?;
        let order = r.open_table(RULE_ORDER)?;
        let rules = r.open_table(RULES)?;
        let rows = match after {
            Some(a) => order.range::<(i32, u64)>((Bound::Excluded(a), Bound::Unbounded))?,
            None => order.iter()?,
        };
        let mut page = Page::default();
        for row in rows {
            let (key, _) = row?;
            let (_, id) = key.value();
            let Some(v) = rules.get(id)? else { continue };
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items.push(decode("rules", v.value())?);
        }
        Ok(page)
    }

    pub fn role(&self, name: &RoleName) -> Result<Option<Role>, StoreError> {
        self.get(ROLES, name.as_str())
    }

    /// Rules in evaluation order.
    pub fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let mut out: Vec<Rule> = self.all(RULES)?;
        out.sort_by_key(|r| (r.priority, r.id));
        Ok(out)
    }

    pub fn rule(&self, id: u64) -> Result<Option<Rule>, StoreError> {
        self.get(RULES, id)
    }
}

impl Tx<'_> {
    pub fn find_role(&self, name: &RoleName) -> Result<Option<Role>, StoreError> {
        self.get(ROLES, name.as_str())
    }

    /// Refuses a role name that no role has, listing the known ones.
    pub fn require_role(&self, role: &RoleName) -> Result<(), StoreError> {
        if self.find_role(role)?.is_some() {
            return Ok(());
        }
        let t = self.txn.open_table(ROLES)?;
        let names: Vec<String> = t
            .iter()?
            .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
            .collect();
        Err(StoreError::Invalid {
            field: "role",
            message: format!("unknown role {role:?}; known roles: {}", names.join(", ")),
        })
    }

    pub fn put_role(&mut self, role: &Role) -> Result<(), StoreError> {
        self.txn
            .open_table(ROLES)?
            .insert(role.name.as_str(), encode(role).as_slice())?;
        self.changed.roles += 1;
        Ok(())
    }

    pub fn remove_role(&mut self, name: &RoleName) -> Result<(), StoreError> {
        self.txn.open_table(ROLES)?.remove(name.as_str())?;
        self.changed.roles += 1;
        Ok(())
    }

    pub fn all_rules(&self) -> Result<Vec<Rule>, StoreError> {
        self.all(RULES)
    }

    /// Stores a new rule under the next rule id, which it returns.
    pub fn next_rule_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_rule_id")
    }

    /// Writes a rule and its place in the evaluation order.
    pub fn put_rule(&mut self, rule: &Rule) -> Result<(), StoreError> {
        let old: Option<Rule> = self.get(RULES, rule.id)?;
        let mut order = self.txn.open_table(RULE_ORDER)?;
        if let Some(old) = old {
            order.remove((old.priority, old.id))?;
        }
        order.insert((rule.priority, rule.id), ())?;
        self.txn
            .open_table(RULES)?
            .insert(rule.id, encode(rule).as_slice())?;
        self.changed.rules += 1;
        Ok(())
    }

    /// Removes a rule; false when there was none.
    pub fn remove_rule(&mut self, id: u64) -> Result<bool, StoreError> {
        let old: Option<Rule> = self.get(RULES, id)?;
        let Some(old) = old else { return Ok(false) };
        self.txn.open_table(RULES)?.remove(id)?;
        self.txn
            .open_table(RULE_ORDER)?
            .remove((old.priority, old.id))?;
        self.changed.rules += 1;
        Ok(true)
    }
}
