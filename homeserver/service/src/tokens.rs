//! Page tokens of the endpoints that page through a list by position.

/// Parses an offset token of the endpoints that page through a list by position (`o<n>` for
/// `/search`, `p<n>` for the room directory, `h<n>` for `/hierarchy`, `n<n>` for
/// `/notifications`): `prefix` then a decimal number. `None` when it is anything else.
pub fn parse_offset_token<T: std::str::FromStr>(prefix: char, token: &str) -> Option<T> {
    token.strip_prefix(prefix)?.parse().ok()
}
