//! Paracord's black-box conformance suite: every test starts its own
//! `paracord` process and talks to it over HTTP only.

mod accounts;
mod appservice;
mod appservice_sdk;
mod backup;
mod conformance;
mod durability;
mod e2ee;
mod ephemeral;
mod errors;
mod federation_events;
mod federation_forged;
mod federation_keys;
mod federation_rooms;
mod federation_split;
mod federation_transport;
mod guild_channels;
mod guild_enforce;
mod guild_federation;
mod guild_members;
mod guilds;
mod hardening;
mod media;
mod membership;
mod messages;
mod people;
mod push;
mod relations;
mod room_versions;
mod rooms;
mod search;
mod spaces;
mod synapse_interop;
mod sync;
mod visibility;
mod webhooks;
