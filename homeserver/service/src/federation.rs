//! Federation: how this server reaches other servers.
//!
//! - [`resolve`]: server discovery (server name → address, port, `Host` header, TLS name).
//! - [`client`]: the outgoing HTTPS client that sends a request to a destination server name.
//! - [`request`]: requests signed with this server's key (`X-Matrix`).
//! - [`query`]: questions asked of other servers for this server's users.
//! - [`joins`]: joining and knocking, locally or through which other servers.
//! - [`sender`]: outgoing transactions (PDUs and EDUs), queued per destination in the
//!   database and retried with backoff.
//!
//! No HTTP handlers live here; the federation API routes are in `paracord-api`.

pub mod client;
pub mod edus;
pub mod joins;
pub mod pdus;
pub mod query;
pub mod request;
pub mod resolve;
pub mod sender;
