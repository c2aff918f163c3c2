//! The Paracord profile's guilds (spec/guilds.md, spec/rest.md).

pub mod applications;
pub mod channels;
pub mod create;
pub mod enforce;
pub mod events;
pub mod members;
pub mod permissions;
pub mod pins;
pub mod polls;
pub mod projection;
pub mod relay;
pub mod slowmode;
pub mod store;
pub mod voice;
pub mod webhooks;
