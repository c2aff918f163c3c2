//! The IRC bridge against a real Paracord and a real IRC server (ngircd), with a raw-TCP IRC
//! client (`paracord_complement::irc`) playing the IRC user.
//!
//! ```sh
//! cargo build -p paracord
//! PARACORD_BIN=$CARGO_TARGET_DIR/debug/paracord cargo test -p paracord-bridge-irc --test it
//! ```

// A black-box test reports a failure by panicking where it happens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod relay;
