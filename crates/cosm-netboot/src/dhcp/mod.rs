//! DHCPv4 for the rack: a pure decision core ([`core::decide`]) over an in-memory lease
//! table ([`leases`]), and a tokio shell ([`server`]) that owns the sockets.
//!
//! Durability is the caller's: the shell hands every lease change to a [`server::LeaseSink`]
//! and sends the DHCPACK only after the sink says the lease is on disk.

pub mod config;
pub mod core;
pub mod leases;
mod pktinfo;
pub mod robustness;
pub mod server;

pub use config::{Boot, DhcpConfig, Mode, Pool, Subnet, UnknownMacs};
pub use leases::{Host, Hosts, LeaseTable, PoolCount, PoolRebuild};

#[cfg(test)]
mod tests;
