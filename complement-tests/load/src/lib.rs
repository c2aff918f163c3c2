//! `paracord-load`: drives any Matrix homeserver through the standard
//! client-server API and reports rates and latencies, one JSON line per
//! scenario, so the same workload can be run against Paracord and against
//! Synapse and the figures compared.
//!
//! Every scenario registers its own users with random localparts
//! (`load_<run>_<n>`), so several runs can share a server. Every loop is
//! bounded in count and by the target's time limit; when the limit cuts a
//! scenario short its report says `"timed_out": true` and its counts show
//! how far it got.

mod client;
mod error;
mod process;
mod report;
mod scale;
mod scenario;
mod stats;

pub use crate::{
    client::{Registration, Target},
    error::LoadError,
    process::{ProcessSample, ProcessStats},
    report::Report,
    scale::{run_all, Scale, ScaleParams},
    scenario::{
        appservice::{appservice, AppserviceParams, AppserviceRegistration},
        fanout::{fanout, FanoutParams},
        growth::{growth, GrowthParams},
        initial_sync::{initial_sync, InitialSyncParams},
        media::{media, MediaParams},
        paginate::{paginate, PaginateParams},
        register::{register, RegisterParams},
        remote_join::{remote_join, RemoteJoinParams},
        rooms::{rooms, RoomsParams},
        rtc_token::{rtc_token, RtcTokenParams},
        search::{search, SearchParams},
        send::{send, SendParams},
    },
};
