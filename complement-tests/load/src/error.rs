//! The one error type of the load tool.

/// Why a request or a scenario failed. Measured requests that fail are
/// counted in a report's `errors`; a failure while setting a scenario up
/// (registering its users, creating its rooms) ends the scenario with one of
/// these.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The request did not complete (connection refused, timeout, …).
    #[error("{what}: transport error: {source}")]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than the expected one.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// The server answered 2xx but the body was not what the spec says.
    #[error("{what}: unexpected response: {detail}")]
    Protocol { what: String, detail: String },
    /// The scenario's time limit passed before its setup finished.
    #[error("{0}: time limit reached")]
    TimeLimit(String),
    /// The arguments were outside the tool's bounds.
    #[error("invalid parameters: {0}")]
    Params(String),
}

impl LoadError {
    pub(crate) fn protocol(what: &str, detail: impl Into<String>) -> Self {
        LoadError::Protocol {
            what: what.to_owned(),
            detail: detail.into(),
        }
    }
}
