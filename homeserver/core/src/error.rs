//! The one error type of the homeserver.
//!
//! Every failure ends up as a Matrix error body (`errcode` + `error`) with the HTTP status the
//! spec asks for. Internal errors carry their detail for the log only; clients see
//! "internal server error".

use http::StatusCode;

/// The Matrix error codes the server emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    Forbidden,
    UnknownToken { soft_logout: bool },
    MissingToken,
    BadJson,
    NotJson,
    NotFound,
    LimitExceeded { retry_after_ms: u64 },
    Unrecognized,
    UserInUse,
    InvalidUsername,
    InvalidParam,
    MissingParam,
    TooLarge,
    Exclusive,
    RoomInUse,
    UnsupportedRoomVersion,
    InvalidRoomState,
    UserDeactivated,
    DuplicateAnnotation,
    CannotOverwriteMedia,
    NotYetUploaded,
    // A key backup write named a backup that is not the current one (a doc comment here
    // would make rustfmt reflow every struct variant).
    WrongRoomKeysVersion { current_version: Option<String> },
    InvalidSignature,
    Unauthorized,
    BadAlias,
    CannotLeaveServerNoticeRoom,
    UnableToAuthoriseJoin,
    // A server asked to join a room whose version it did not list as supported.
    IncompatibleRoomVersion { room_version: String },
    // Appservice pings (`/_matrix/client/v1/appservice/{id}/ping`).
    UrlNotSet,
    ConnectionFailed,
    ConnectionTimeout,
    BadStatus { status: u16, body: String },
    // An appservice's `?device_id=` names no device of the user.
    UnknownDevice,
    // MSC4140, the revision whose delayed events are sent with `?org.matrix.msc4140.delay=`:
    // a delay over the server's maximum, `M_UNKNOWN` with the unstable errcode
    // `M_MAX_DELAY_EXCEEDED` and the maximum.
    MaxDelayExceeded { max_delay_ms: u64 },
    // MSC4140, that revision: the user has as many delayed events scheduled as allowed
    // (`M_MAX_DELAYED_EVENTS_EXCEEDED`); the first of them is due in `retry_after_ms`.
    MaxDelayedEventsExceeded { retry_after_ms: u64 },
    Unknown,
}

impl ErrorKind {
    /// The `errcode` string of this kind.
    pub fn errcode(&self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken { .. } => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::BadJson => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded { .. } => "M_LIMIT_EXCEEDED",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::InvalidRoomState => "M_INVALID_ROOM_STATE",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::DuplicateAnnotation => "M_DUPLICATE_ANNOTATION",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::WrongRoomKeysVersion { .. } => "M_WRONG_ROOM_KEYS_VERSION",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::BadAlias => "M_BAD_ALIAS",
            Self::CannotLeaveServerNoticeRoom => "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
            Self::UnableToAuthoriseJoin => "M_UNABLE_TO_AUTHORISE_JOIN",
            Self::IncompatibleRoomVersion { .. } => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::UrlNotSet => "M_URL_NOT_SET",
            Self::UnknownDevice => "M_UNKNOWN_DEVICE",
            Self::ConnectionFailed => "M_CONNECTION_FAILED",
            Self::ConnectionTimeout => "M_CONNECTION_TIMEOUT",
            Self::BadStatus { .. } => "M_BAD_STATUS",
            Self::MaxDelayExceeded { .. } | Self::MaxDelayedEventsExceeded { .. } => "M_UNKNOWN",
            Self::Unknown => "M_UNKNOWN",
        }
    }
}

/// Every error the server can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error meant for the client.
    #[error("{kind:?}: {message}")]
    Matrix {
        status: StatusCode,
        kind: ErrorKind,
        message: String,
    },
    /// A user-interactive auth step: the body is the UIA JSON (flows, session, ...).
    #[error("user-interactive authentication required")]
    Uia(serde_json::Value),
    /// Something went wrong inside the server; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request is about a guild hosted by another server (named here), which has to
    /// carry it out; the Paracord API relays it there (spec/rest.md §3).
    #[error("the guild is hosted by {0}")]
    HostedElsewhere(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix {
            status,
            kind,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::MissingParam, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge, message)
    }
    pub fn invalid_signature(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidSignature,
            message,
        )
    }
    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::Unrecognized, message)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "missing access token",
        )
    }
    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken { soft_logout },
            "unknown or expired access token",
        )
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded { retry_after_ms },
            "too many requests",
        )
    }
    /// 403 `M_WRONG_ROOM_KEYS_VERSION`, telling the client which backup is current.
    pub fn wrong_room_keys_version(current_version: Option<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorKind::WrongRoomKeysVersion { current_version },
            "wrong backup version",
        )
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    /// The HTTP status and JSON body the client sees.
    pub fn classify(&self) -> (StatusCode, serde_json::Value) {
        match self {
            Self::Matrix {
                status,
                kind,
                message,
            } => {
                let mut body = serde_json::json!({ "errcode": kind.errcode(), "error": message });
                match kind {
                    ErrorKind::UnknownToken { soft_logout } => {
                        body["soft_logout"] = (*soft_logout).into();
                    }
                    ErrorKind::LimitExceeded { retry_after_ms } => {
                        body["retry_after_ms"] = (*retry_after_ms).into();
                    }
                    ErrorKind::WrongRoomKeysVersion {
                        current_version: Some(current),
                    } => {
                        body["current_version"] = current.as_str().into();
                    }
                    ErrorKind::IncompatibleRoomVersion { room_version } => {
                        body["room_version"] = room_version.as_str().into();
                    }
                    ErrorKind::BadStatus {
                        status,
                        body: answer,
                    } => {
                        body["status"] = (*status).into();
                        body["body"] = answer.as_str().into();
                    }
                    ErrorKind::MaxDelayExceeded { max_delay_ms } => {
                        body["org.matrix.msc4140.errcode"] = "M_MAX_DELAY_EXCEEDED".into();
                        body["org.matrix.msc4140.max_delay"] = (*max_delay_ms).into();
                    }
                    ErrorKind::MaxDelayedEventsExceeded { .. } => {
                        body["org.matrix.msc4140.errcode"] = "M_MAX_DELAYED_EVENTS_EXCEEDED".into();
                    }
                    _ => {}
                }
                (*status, body)
            }
            Self::Uia(body) => (StatusCode::UNAUTHORIZED, body.clone()),
            Self::HostedElsewhere(host) => (
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "errcode": "M_UNKNOWN",
                    "error": format!("this guild is hosted by {host}, which has to carry out the request"),
                }),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "errcode": "M_UNKNOWN", "error": "internal server error" }),
            ),
        }
    }

    /// The Matrix error kind, if this is a client-facing error.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Matrix { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::internal(format!("json: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_detail() {
        let (status, body) = Error::internal("disk on fire at /secret/path").classify();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn limit_exceeded_carries_retry_after() {
        let (status, body) = Error::limit_exceeded(1500).classify();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(body["retry_after_ms"], 1500);
    }

    #[test]
    fn wrong_room_keys_version_names_the_current_one() {
        let (status, body) = Error::wrong_room_keys_version(Some("42".into())).classify();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errcode"], "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(body["current_version"], "42");
    }

    #[test]
    fn delayed_event_limits_carry_the_unstable_errcodes() {
        let (status, body) = Error::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::MaxDelayExceeded { max_delay_ms: 1000 },
            "too long",
        )
        .classify();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert_eq!(body["org.matrix.msc4140.errcode"], "M_MAX_DELAY_EXCEEDED");
        assert_eq!(body["org.matrix.msc4140.max_delay"], 1000);
        let (_, body) = Error::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::MaxDelayedEventsExceeded { retry_after_ms: 5 },
            "too many",
        )
        .classify();
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert_eq!(
            body["org.matrix.msc4140.errcode"],
            "M_MAX_DELAYED_EVENTS_EXCEEDED"
        );
    }

    #[test]
    fn unknown_token_has_soft_logout() {
        let (_, body) = Error::unknown_token(true).classify();
        assert_eq!(body["soft_logout"], true);
    }
}
