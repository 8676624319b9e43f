//! The REST API driven through the router (`tower::ServiceExt::oneshot`), with a real store
//! in a temporary directory: every endpoint, authentication, and every error path. One
//! file per resource; `common` holds the fixture. `https` alone uses real sockets: the router
//! served by `http::serve` with HTTP and HTTPS on one port, and the daemon binary itself.

mod agents;
mod auth;
mod boot;
mod catalog;
mod common;
mod console;
mod deploy;
mod errors;
mod https;
mod images;
mod install;
mod lifecycle;
mod machines;
mod net;
mod ops;
mod paging;
mod power;
mod vms;
