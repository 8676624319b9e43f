//! Kickstart templates per role and OS release, and their rendering.
//!
//! Empty in this release: the templates arrive with the deploy flow. This crate will never
//! do network or database I/O; it renders text from a machine description it is given.
