//! Bots, webhooks and bridges as Matrix **application services**, over HTTP only.
//!
//! - [`Registration`]: the registration file, generated with random tokens.
//! - [`Appservice`]: the routes the homeserver calls (transactions, user and alias queries,
//!   ping) and the [`Events`] stream they feed, deduplicated by transaction id.
//! - [`Intent`]: acting as the bot or one of its namespaced users (`?user_id=`).
//! - [`CommandParser`]: `!cmd arg "quoted arg"`.
//! - [`StateStore`]: what the appservice remembers ([`MemoryStore`], [`JsonFileStore`]).
//!
//! See the crate README for a complete echo bot.

mod appservice;
mod command;
mod connection;
mod error;
mod event;
mod intent;
mod registration;
mod store;

pub use ruma;

pub use crate::{
    appservice::{Appservice, AppserviceBuilder, Events, QueryHandler, DEFAULT_RECENT_TXNS},
    command::{parse_command, Command, CommandParser},
    error::{Error, Result},
    event::{Event, Message},
    intent::{CreateRoom, Intent},
    registration::{
        alias_namespace, alias_namespace_on, random_token, room_namespace, user_namespace,
        user_namespace_on, NamespaceEntry, Registration,
    },
    store::{JsonFileStore, MemoryStore, StateStore, REMEMBERED_TXNS},
};
