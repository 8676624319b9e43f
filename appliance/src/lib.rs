//! The COSM appliance: the store, the REST API, the machine lifecycle and role rules.
//!
//! The binary (`src/main.rs`) parses the command line and calls [`serve::run`]. Layers:
//! [`api`] and [`boot`] are the only code that knows HTTP and JSON; [`store`] is the only code that
//! touches redb; [`lifecycle`] and [`rules`] are pure functions the store calls.

pub mod api;
pub mod auth;
pub mod boot;
pub mod config;
pub mod dhcp_service;
pub mod images;
pub mod lifecycle;
pub mod liveness;
pub mod metrics;
pub mod rules;
pub mod serve;
pub mod store;
pub mod timeline;
