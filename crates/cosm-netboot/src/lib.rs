//! Protocol cores for network boot: DHCPv4, proxyDHCP, TFTP, iPXE scripts, and the IPv6
//! router advertisements that end network-boot firmware's wait for IPv6 autoconfiguration.
//!
//! Each server here is a pure decision core (request + state + config → reply) with no I/O,
//! plus a thin tokio shell that owns the socket. This crate does no database I/O: leases
//! reach the appliance's store through a sink the caller provides.

pub mod boot_arch;
pub mod dhcp;
pub mod ipxe;
pub mod ra;
pub mod rate;
pub mod tftp;
