//! The COSM node agent as a library: the pieces `cosm-agent` (src/main.rs) is built from,
//! kept here so integration tests can drive them directly.
//!
//! - [`inventory`] — reads the machine's hardware inventory from procfs and sysfs.

pub mod inventory;
pub mod run;
pub mod settings;
