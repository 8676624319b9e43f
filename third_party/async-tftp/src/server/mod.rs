//! Server side implementation.

mod builder;
mod handler;
mod netascii;
mod read_req;
#[allow(clippy::module_inception)]
mod server;
mod write_req;

pub mod handlers;

pub use self::builder::*;
pub use self::handler::*;
pub use self::server::*;
