//! Tenant networks and security groups (issue 14): reads and writes only; what may be
//! created or deleted is `app::net`'s.

use super::engine::{encode, Store, StoreCommand, Tx};
use super::schema::{NETWORKS, NETWORK_VNIS, SECGROUPS};
use super::StoreError;
use cosm_wire::{Network, NetworkName, SecGroupName, SecurityGroup};
use redb::ReadableTable;
use std::collections::BTreeSet;

impl<C: StoreCommand> Store<C> {
    pub fn network(&self, name: &NetworkName) -> Result<Option<Network>, StoreError> {
        self.get(NETWORKS, name.as_str())
    }

    /// Every network, in name order.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.all(NETWORKS)
    }

    pub fn secgroup(&self, name: &SecGroupName) -> Result<Option<SecurityGroup>, StoreError> {
        self.get(SECGROUPS, name.as_str())
    }

    /// Every security group, in name order.
    pub fn secgroups(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        self.all(SECGROUPS)
    }
}

impl Tx<'_> {
    pub fn network(&self, name: &NetworkName) -> Result<Option<Network>, StoreError> {
        self.get(NETWORKS, name.as_str())
    }

    /// The VNIs networks use.
    pub fn network_vnis(&self) -> Result<BTreeSet<u32>, StoreError> {
        let t = self.txn.open_table(NETWORK_VNIS)?;
        let mut out = BTreeSet::new();
        for row in t.iter()? {
            out.insert(row?.0.value());
        }
        Ok(out)
    }

    /// Writes a new network and its VNI index entry.
    pub fn put_network(&mut self, n: &Network) -> Result<(), StoreError> {
        self.txn
            .open_table(NETWORKS)?
            .insert(n.name.as_str(), encode(n).as_slice())?;
        self.txn
            .open_table(NETWORK_VNIS)?
            .insert(n.vni, n.name.as_str())?;
        self.changed.net += 1;
        Ok(())
    }

    /// False when there was none.
    pub fn remove_network(&mut self, n: &Network) -> Result<bool, StoreError> {
        let found = self
            .txn
            .open_table(NETWORKS)?
            .remove(n.name.as_str())?
            .is_some();
        self.txn.open_table(NETWORK_VNIS)?.remove(n.vni)?;
        self.changed.net += u64::from(found);
        Ok(found)
    }

    pub fn secgroup(&self, name: &SecGroupName) -> Result<Option<SecurityGroup>, StoreError> {
        self.get(SECGROUPS, name.as_str())
    }

    pub fn all_secgroups(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        self.all(SECGROUPS)
    }

    pub fn put_secgroup(&mut self, g: &SecurityGroup) -> Result<(), StoreError> {
        self.txn
            .open_table(SECGROUPS)?
            .insert(g.name.as_str(), encode(g).as_slice())?;
        self.changed.net += 1;
        Ok(())
    }

    pub fn remove_secgroup(&mut self, name: &SecGroupName) -> Result<bool, StoreError> {
        let found = self
            .txn
            .open_table(SECGROUPS)?
            .remove(name.as_str())?
            .is_some();
        self.changed.net += u64::from(found);
        Ok(found)
    }
}
