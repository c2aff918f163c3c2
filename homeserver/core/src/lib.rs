//! Paracord core: configuration, the error type and small shared helpers.
//!
//! This crate sits at the bottom of the homeserver's dependency arrow
//! (`api` → `service` → `storage` → `core`); it knows nothing of HTTP routing or storage.

pub mod config;
pub mod error;
pub mod time;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
