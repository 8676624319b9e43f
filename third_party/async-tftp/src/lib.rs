//! Executor agnostic async TFTP implementation, written with [smol]
//! building blocks. Currently it implements only server side.
//!
//! The following RFCs are implemented:
//!
//! * [RFC 1350] - The TFTP Protocol (Revision 2).
//! * [RFC 2347] - TFTP Option Extension.
//! * [RFC 2348] - TFTP Blocksize Option.
//! * [RFC 2349] - TFTP Timeout Interval and Transfer Size Options.
//! * [RFC 7440] - TFTP Windowsize Option.
//!
//! Features:
//!
//! * Async implementation.
//! * Works with any runtime/executor.
//! * Serve read (RRQ) and write (WRQ) requests.
//! * Unlimited transfer file size (block number roll-over).
//! * You can set non-standard reply [`timeout`]. This is useful for faster
//!   file transfer in unstable environments.
//! * You can set [block size limit]. This is useful if you are accessing
//!   client through a VPN.
//! * You can implement your own [`Handler`] for more advance cases than
//!   just serving a directory. Check [`tftpd-targz.rs`] for an example.
//!
//! # Example
//!
//! ```ignore
//! use async_tftp::server::TftpServerBuilder;
//! use async_tftp::Result;
//!
//! #[tokio::main] // or any other runtime/executor
//! async fn main() -> Result<()> {
//!     let tftpd = TftpServerBuilder::with_dir_ro(".")?.build().await?;
//!     tftpd.serve().await?;
//!     Ok(())
//! }
//! ```
//!
//! Add in `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! async-tftp = "0.4"
//! # or any other runtime/executor
//! tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
//! ```
//!
//! [smol]: https://docs.rs/smol
//!
//! [`timeout`]: server::TftpServerBuilder::timeout
//! [block size limit]: server::TftpServerBuilder::block_size_limit
//! [`Handler`]: server::Handler
//! [`tftpd-targz.rs`]: https://github.com/oblique/async-tftp-rs/blob/master/examples/tftpd-targz.rs
//!
//! [RFC 1350]: https://tools.ietf.org/html/rfc1350
//! [RFC 2347]: https://tools.ietf.org/html/rfc2347
//! [RFC 2348]: https://tools.ietf.org/html/rfc2348
//! [RFC 2349]: https://tools.ietf.org/html/rfc2349
//! [RFC 7440]: https://tools.ietf.org/html/rfc7440

pub mod server;

/// Packet definitions that are needed in public API.
pub mod packet;

mod error;
mod parse;

mod utils;

pub use crate::error::*;
