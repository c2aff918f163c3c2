//! See `tests/matrix_sdk_client.rs`.
