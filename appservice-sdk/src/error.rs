//! The one error type of the crate.

use thiserror::Error;

/// What went wrong talking to the homeserver, reading a file or keeping state.
#[derive(Debug, Error)]
pub enum Error {
    /// The homeserver answered with a Matrix error (`{"errcode": …, "error": …}`) or a
    /// non-2xx status.
    #[error("{status} {errcode}: {message}")]
    Matrix {
        /// The HTTP status.
        status: u16,
        /// The Matrix `errcode`, e.g. `M_FORBIDDEN` (`M_UNKNOWN` when the body had none).
        errcode: String,
        /// The human-readable `error`.
        message: String,
    },
    /// The request did not reach the homeserver, or its answer could not be read.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A body or file that is not the JSON expected.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A registration file that is not valid YAML for a registration.
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Reading or writing a file.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A user id, room id, alias or event id that does not parse, or an answer missing a field.
    #[error("invalid: {0}")]
    Invalid(String),
    /// End-to-end encryption failed (feature `e2ee`): the Olm machine or its store.
    #[cfg(feature = "e2ee")]
    #[error("crypto: {0}")]
    Crypto(String),
}

impl Error {
    /// The Matrix `errcode` when the homeserver sent one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Error::Matrix { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// The HTTP status of a homeserver answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Matrix { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Error::Invalid(what.into())
    }
}

impl From<ruma::IdParseError> for Error {
    fn from(e: ruma::IdParseError) -> Self {
        Error::Invalid(e.to_string())
    }
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
