//! `all --scale`: every scenario at one of three fixed sizes.

use crate::{
    client::Target,
    error::LoadError,
    report::Report,
    scenario::{
        appservice::{appservice, AppserviceParams, AppserviceRegistration},
        fanout::{fanout, FanoutParams},
        growth::{growth, GrowthParams},
        initial_sync::{initial_sync, InitialSyncParams},
        media::{media, MediaParams},
        paginate::{paginate, PaginateParams},
        register::{register, RegisterParams},
        rooms::{rooms, RoomsParams},
        rtc_token::{rtc_token, RtcTokenParams},
        search::{search, SearchParams},
        send::{send, SendParams},
    },
};

/// How big `all` makes each scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// A smoke run: seconds against a debug build.
    Tiny,
    /// Minutes against a release build.
    Small,
    /// Tens of minutes against a release build.
    Medium,
}

/// The parameters of every scenario at one scale.
#[derive(Clone, Debug)]
pub struct ScaleParams {
    pub register: RegisterParams,
    pub rooms: RoomsParams,
    pub send: SendParams,
    pub fanout: FanoutParams,
    pub initial_sync: InitialSyncParams,
    pub paginate: PaginateParams,
    pub growth: GrowthParams,
    pub search: SearchParams,
    pub media: MediaParams,
    pub rtc_token: RtcTokenParams,
}

impl Scale {
    pub fn name(self) -> &'static str {
        match self {
            Scale::Tiny => "tiny",
            Scale::Small => "small",
            Scale::Medium => "medium",
        }
    }

    pub fn params(self) -> ScaleParams {
        // (users; rooms, members; messages, senders; listeners, messages;
        //  rooms, history; history, page; growth bases, steps, sends, page)
        let (users, rooms, members, messages, senders, listeners, fan_msgs) = match self {
            Scale::Tiny => (3, 3, 2, 30, 3, 3, 10),
            Scale::Small => (20, 20, 10, 2000, 8, 100, 50),
            Scale::Medium => (50, 50, 25, 2000, 16, 100, 100),
        };
        let (sync_rooms, sync_history, pag_history, page) = match self {
            Scale::Tiny => (3, 10, 60, 20),
            Scale::Small => (20, 50, 1000, 50),
            Scale::Medium => (100, 100, 5000, 100),
        };
        let (base_rooms, base_members, base_history, steps, sends) = match self {
            Scale::Tiny => (1, 1, 5, 3, 5),
            Scale::Small => (2, 2, 20, 4, 20),
            Scale::Medium => (4, 4, 25, 4, 50),
        };
        // (search history, queries; media uploads, bytes each)
        let (search_history, queries, uploads, size) = match self {
            Scale::Tiny => (30, 10, 5, 64 * 1024),
            Scale::Small => (500, 100, 50, 256 * 1024),
            Scale::Medium => (2000, 500, 200, 1024 * 1024),
        };
        // (get_token requests, concurrent clients)
        let (token_requests, token_clients) = match self {
            Scale::Tiny => (60, 3),
            Scale::Small => (5000, 8),
            Scale::Medium => (20000, 16),
        };
        ScaleParams {
            register: RegisterParams { users },
            rooms: RoomsParams { rooms, members },
            send: SendParams { messages, senders },
            fanout: FanoutParams {
                listeners,
                messages: fan_msgs,
            },
            initial_sync: InitialSyncParams {
                rooms: sync_rooms,
                history: sync_history,
            },
            paginate: PaginateParams {
                history: pag_history,
                page,
            },
            growth: GrowthParams {
                base_rooms,
                base_members,
                base_history,
                steps,
                sends,
                page,
            },
            search: SearchParams {
                history: search_history,
                queries,
            },
            media: MediaParams { uploads, size },
            rtc_token: RtcTokenParams {
                requests: token_requests,
                clients: token_clients,
            },
        }
    }
}

/// Runs every scenario at `scale`, handing each report to `emit` as soon as
/// it is ready. A scenario that fails outright yields a report with
/// `failed: true` and the run goes on with the next one.
///
/// With `appservice` (the registration the server was started with) the `appservice`
/// scenario runs after `media`, with the `send` scenario's messages and senders. `rtc-token`
/// comes last: the tokens it mints stay on the server's books (until they are used and the
/// SFU says the participant left), so no other scenario runs on a server holding them; on a
/// server that is not a MatrixRTC focus its report says `unsupported`.
pub async fn run_all(
    target: &Target,
    scale: Scale,
    appservice_registration: Option<&AppserviceRegistration>,
    mut emit: impl FnMut(&Report),
) -> Vec<Report> {
    let p = scale.params();
    let mut reports = Vec::new();
    let mut keep = |name: &str, r: Result<Report, LoadError>| {
        let report = r.unwrap_or_else(|e| Report::failure(name, target, &e));
        emit(&report);
        reports.push(report);
    };
    keep("register", register(target, &p.register).await);
    keep("rooms", rooms(target, &p.rooms).await);
    keep("send", send(target, &p.send).await);
    keep("fanout", fanout(target, &p.fanout).await);
    keep("initial-sync", initial_sync(target, &p.initial_sync).await);
    keep("paginate", paginate(target, &p.paginate).await);
    match growth(target, &p.growth).await {
        Ok(steps) => {
            for step in steps {
                keep("growth", Ok(step));
            }
        }
        Err(e) => keep("growth", Err(e)),
    }
    keep("search", search(target, &p.search).await);
    keep("media", media(target, &p.media).await);
    if let Some(registration) = appservice_registration {
        let params = AppserviceParams {
            messages: p.send.messages,
            senders: p.send.senders,
            registration: registration.clone(),
        };
        keep("appservice", appservice(target, &params).await);
    }
    keep("rtc-token", rtc_token(target, &p.rtc_token).await);
    reports
}
