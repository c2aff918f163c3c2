//! What an appservice's users need to reach the homeserver, shared by the [`Appservice`]
//! that receives from it and the [`Intent`]s that act through it.
//!
//! [`Appservice`]: crate::Appservice
//! [`Intent`]: crate::Intent

use std::sync::Arc;

use ruma::{OwnedServerName, OwnedUserId, UserId};

use crate::{error::Result, registration::Registration, store::StateStore};

pub(crate) struct Connection {
    pub(crate) registration: Registration,
    /// The homeserver's client-server API base, without a trailing slash.
    pub(crate) homeserver: String,
    /// The homeserver's name: users are `@…:server_name`.
    pub(crate) server_name: OwnedServerName,
    pub(crate) http: reqwest::Client,
    pub(crate) store: Arc<dyn StateStore>,
    /// The encrypted device, once [`Appservice::enable_encryption`] made it.
    ///
    /// [`Appservice::enable_encryption`]: crate::Appservice::enable_encryption
    #[cfg(feature = "e2ee")]
    pub(crate) crypto: std::sync::OnceLock<crate::e2ee::Crypto>,
}

impl Connection {
    /// What the encrypted device needs to reach the homeserver.
    #[cfg(feature = "e2ee")]
    pub(crate) fn link(&self) -> crate::e2ee::Link<'_> {
        crate::e2ee::Link {
            http: &self.http,
            homeserver: &self.homeserver,
            as_token: &self.registration.as_token,
        }
    }

    /// `@sender_localpart:server_name`, the appservice's own user.
    pub(crate) fn bot_user_id(&self) -> Result<OwnedUserId> {
        Ok(UserId::parse(format!(
            "@{}:{}",
            self.registration.sender_localpart, self.server_name
        ))?)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.registration.id)
            .field("homeserver", &self.homeserver)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
