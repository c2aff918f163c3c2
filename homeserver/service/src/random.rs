//! Random identifiers.

use rand::{distributions::Alphanumeric, Rng};

/// A random string of `len` ASCII letters and digits (ids, opaque tokens).
pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
