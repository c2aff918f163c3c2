//! Pieces of the client-server API's URLs shared by everything that calls the homeserver.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::registration::random_token;

pub(crate) const CLIENT_V3: &str = "/client/v3";

/// Percent-encodes everything but RFC 3986 unreserved characters, for path segments and
/// query values.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A transaction id for a `PUT …/send/…`, unique for this process.
pub(crate) fn txn_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.{n}", &random_token()[..16])
}
