//! The COSM appliance: the store, the application's workflows, the REST API, the network
//! boot services.
//!
//! The binary (`src/main.rs`) parses the command line and calls [`serve::run`], which runs
//! what [`assembly`] builds. Layers, each importing only downwards:
//! [`http`] (the only code that knows HTTP) → [`app`] (every workflow and its
//! preconditions, as store commands) → [`store`] (the only code that touches redb).
//! [`config`] is the checked configuration; [`dhcp_service`] wires netboot's DHCP server to
//! the application; [`metrics`] is the Prometheus registry; [`api_tls`] is the certificate of
//! HTTPS on the API port.

pub mod api_tls;
pub mod app;
pub mod assembly;
pub mod config;
pub mod dhcp_service;
pub mod http;
pub mod metrics;
pub mod serve;
pub mod store;
