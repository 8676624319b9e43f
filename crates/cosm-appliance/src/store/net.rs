//! Tenant networks and security groups (issue 14): reads and writes only; what may be
//! created or deleted is `app::net`'s.

use super::engine::{encode, Store, StoreCommand, Tx};
use super::schema::{NETWORKS, NETWORK_VNIS, PORTS, SECGROUPS, VM_GENERATIONS};
use super::StoreError;
use cosm_wire::{MacAddr, Network, NetworkName, Port, SecGroupName, SecurityGroup};
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

    pub fn port(&self, mac: MacAddr) -> Result<Option<Port>, StoreError> {
        self.get(PORTS, mac.to_u64())
    }

    /// Every port, in MAC order.
    pub fn ports(&self) -> Result<Vec<Port>, StoreError> {
        self.all(PORTS)
    }

    /// Raised by every write that changes what some host's network should look like (a
    /// port, a security group, a VM with ports moving); part of every host's desired
    /// generation.
    pub fn net_generation(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(VM_GENERATIONS)?;
        Ok(t.get(NET_GENERATION_KEY)?.map_or(0, |v| v.value()))
    }
}

/// The key of the network generation in the VM generations table (a MAC is 48 bits, so no
/// host's key is this).
const NET_GENERATION_KEY: u64 = u64::MAX;

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
        self.bump_net_generation()
    }

    /// See [`Store::net_generation`].
    pub fn bump_net_generation(&mut self) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(VM_GENERATIONS)?;
        let next = t.get(NET_GENERATION_KEY)?.map_or(0, |v| v.value()) + 1;
        t.insert(NET_GENERATION_KEY, next)?;
        Ok(())
    }

    pub fn port(&self, mac: MacAddr) -> Result<Option<Port>, StoreError> {
        self.get(PORTS, mac.to_u64())
    }

    pub fn all_ports(&self) -> Result<Vec<Port>, StoreError> {
        self.all(PORTS)
    }

    pub fn put_port(&mut self, p: &Port) -> Result<(), StoreError> {
        self.txn
            .open_table(PORTS)?
            .insert(p.mac.to_u64(), encode(p).as_slice())?;
        self.changed.net += 1;
        self.bump_net_generation()
    }

    pub fn remove_port(&mut self, mac: MacAddr) -> Result<bool, StoreError> {
        let found = self.txn.open_table(PORTS)?.remove(mac.to_u64())?.is_some();
        if found {
            self.changed.net += 1;
            self.bump_net_generation()?;
        }
        Ok(found)
    }

    pub fn remove_secgroup(&mut self, name: &SecGroupName) -> Result<bool, StoreError> {
        let found = self
            .txn
            .open_table(SECGROUPS)?
            .remove(name.as_str())?
            .is_some();
        self.changed.net += u64::from(found);
        if found {
            self.bump_net_generation()?;
        }
        Ok(found)
    }
}
