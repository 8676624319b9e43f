//! The REST API driven through the router (`tower::ServiceExt::oneshot`), with a real store
//! in a temporary directory: every endpoint, authentication, and every error path. One
//! file per resource; `common` holds the fixture.

mod agents;
mod auth;
mod boot;
mod catalog;
mod common;
mod console;
mod deploy;
mod errors;
mod images;
mod lifecycle;
mod machines;
mod net;
mod ops;
mod paging;
mod power;
mod vms;
