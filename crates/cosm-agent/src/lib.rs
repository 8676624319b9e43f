//! The COSM node agent as a library: the pieces `cosm-agent` (src/main.rs) is built from,
//! kept here so integration tests and the simulated agents of `cosm-e2e` can use them.
//!
//! - [`settings`] — where the settings come from: flags, a config file, the kernel command
//!   line.
//! - [`inventory`] — reads the machine's hardware inventory from procfs and sysfs.
//! - [`enrolment`] — enrols with the appliance and keeps the node credential.
//! - [`controller`] — the controllers that carry out queued actions, each on its own
//!   thread, and the dispatcher that feeds them; also their simulated forms.
//! - [`vms`] — the VM controller: makes the host's hypervisor match the desired VMs and
//!   reports the host's domains itself, on its own thread.
//! - [`network`] — the seam to the host's tenant networking (issue 14) that the VM
//!   controller reconciles before its VMs, and what it reports of it.
//! - [`peers`] — on hypervisor hosts: answers peer probes, probes the peers the
//!   appliance names, and the opt-in self-fence.
//! - [`run`] — the heartbeat loop, which never waits for a controller.
//! - [`install`] — `cosm-agent install`: writes an image onto this machine's disk, grows
//!   its partition table, configures and enrols the installed system (the ramdisk, with
//!   `cosm.install=` on the kernel line).

pub mod controller;
pub mod enrolment;
pub mod install;
pub mod inventory;
pub mod network;
pub mod peers;
pub mod run;
pub mod settings;
pub mod vms;
