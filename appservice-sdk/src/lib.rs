//! Bots, webhooks and bridges as Matrix **application services**, over HTTP only.
//!
//! - [`Registration`]: the registration file, generated with random tokens.
//! - [`Appservice`]: the routes the homeserver calls (transactions, user and alias queries,
//!   ping) and the [`Events`] stream they feed, deduplicated by transaction id.
//! - [`Intent`]: acting as the bot or one of its namespaced users (`?user_id=`).
//! - [`CommandParser`]: `!cmd arg "quoted arg"`.
//! - With the `e2ee` feature, [`Appservice::enable_encryption`]: a device of the bot that
//!   decrypts the encrypted events it receives and encrypts what it sends into encrypted rooms.
//! - [`StateStore`]: what the appservice remembers ([`MemoryStore`], [`JsonFileStore`]).
//!
//! See the crate README for a complete echo bot.

mod appservice;
mod command;
mod connection;
#[cfg(feature = "e2ee")]
mod e2ee;
mod error;
mod event;
mod intent;
mod registration;
mod store;
mod wire;

pub use ruma;

/// The crypto crate the `e2ee` feature uses, for what the SDK does not wrap (e.g.
/// [`Appservice::olm_machine`]).
#[cfg(feature = "e2ee")]
pub use matrix_sdk_crypto;

pub use crate::{
    appservice::{Appservice, AppserviceBuilder, Events, QueryHandler, DEFAULT_RECENT_TXNS},
    command::{parse_command, Command, CommandParser},
    error::{Error, Result},
    event::{Encryption, Event, Message},
    intent::{CreateRoom, Intent},
    registration::{
        alias_namespace, alias_namespace_on, random_token, room_namespace, user_namespace,
        user_namespace_on, NamespaceEntry, Registration,
    },
    store::{JsonFileStore, MemoryStore, StateStore, REMEMBERED_TXNS},
};
