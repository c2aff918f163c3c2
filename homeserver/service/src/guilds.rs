//! The Paracord profile's guilds (spec/guilds.md). So far: the permission model.

pub mod events;
pub mod permissions;
pub mod projection;
pub mod store;
