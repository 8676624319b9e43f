//! DHCP lease records, keyed by IPv4 address, and image records, keyed by name.

use super::engine::{encode, Page, Store, StoreCommand, Tx};
use super::schema::{IMAGES, LEASES};
use super::StoreError;
use cosm_wire::{Image, Lease, LeaseState, MacAddr};
use std::net::Ipv4Addr;

impl<C: StoreCommand> Store<C> {
    /// Every lease record, by address.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.all(LEASES)
    }

    /// One page of lease records by address, after `after`, optionally only this MAC's
    /// and/or those in this state.
    pub fn leases_page(
        &self,
        mac: Option<MacAddr>,
        state: Option<LeaseState>,
        after: Option<Ipv4Addr>,
        limit: usize,
    ) -> Result<Page<Lease>, StoreError> {
        self.page(LEASES, after.map(u32::from), limit, |l: &Lease| {
            mac.is_none_or(|m| l.mac == m) && state.is_none_or(|s| l.state == s)
        })
    }

    /// One page of image records by name, after the name `after`.
    pub fn images_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Image>, StoreError> {
        self.page(IMAGES, after, limit, |_: &Image| true)
    }

    /// The lease record of one address, if any.
    pub fn lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        self.get(LEASES, u32::from(ip))
    }

    /// Every image record, by name.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        self.all(IMAGES)
    }

    pub fn image(&self, name: &str) -> Result<Option<Image>, StoreError> {
        self.get(IMAGES, name)
    }
}

impl Tx<'_> {
    pub fn find_image(&self, name: &str) -> Result<Option<Image>, StoreError> {
        self.get(IMAGES, name)
    }

    pub fn put_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        self.txn
            .open_table(LEASES)?
            .insert(u32::from(lease.ip), encode(lease).as_slice())?;
        self.changed.leases += 1;
        Ok(())
    }

    pub fn put_image(&mut self, image: &Image) -> Result<(), StoreError> {
        self.txn
            .open_table(IMAGES)?
            .insert(image.name.as_str(), encode(image).as_slice())?;
        self.changed.images += 1;
        Ok(())
    }

    /// Removes an image record; false when there was none.
    pub fn remove_image(&mut self, name: &str) -> Result<bool, StoreError> {
        let found = self.txn.open_table(IMAGES)?.remove(name)?.is_some();
        if found {
            self.changed.images += 1;
        }
        Ok(found)
    }
}
