//! Smoke test of the load tool: a real debug `paracord` (through the
//! complement harness) and every scenario at tiny sizes through the library
//! API, checking that each produced sane figures.

// A test reports failure by panicking.
#![allow(clippy::panic)]

use std::time::{Duration, Instant};

use paracord_complement::TestServer;
use paracord_load::{
    appservice, register, rtc_token, run_all, AppserviceParams, AppserviceRegistration,
    RegisterParams, Registration, Report, RtcTokenParams, Scale, Target,
};
use serde_json::Value;

const SECRET: &str = "load-smoke-shared-secret";

/// Makes the server a MatrixRTC focus, as scripts/bench does: it only signs tokens, so the
/// LiveKit URL need not answer.
fn livekit(env: &mut paracord_complement::Env) {
    TestServer::set_env(env, "PARACORD_LIVEKIT_URL", "ws://127.0.0.1:9");
    TestServer::set_env(env, "PARACORD_LIVEKIT_API_KEY", "load-smoke");
    TestServer::set_env(
        env,
        "PARACORD_LIVEKIT_API_SECRET",
        "load-smoke-livekit-secret-of-at-least-32-characters",
    );
}

/// Checks what every report must satisfy: it ran, nothing failed, nothing
/// was cut short, every latency and rate is positive, the server process
/// was sampled, and the JSON line reads back.
fn assert_sane(r: &Report) {
    let line = r.to_json_line();
    assert!(!r.failed, "scenario failed: {line}");
    assert!(r.unsupported.is_none(), "not supported: {line}");
    assert_eq!(r.errors, 0, "errors in {line}");
    assert!(!r.timed_out, "timed out: {line}");
    assert!(!r.metrics.is_empty(), "no metrics in {line}");
    for (key, value) in &r.metrics {
        assert!(value.is_finite(), "{key} is not finite in {line}");
        // A listener may see an event before the sender has read the
        // response to its send: a delivery delay of zero is legitimate for
        // the median, not for the tail.
        // An appservice often has the event before the sender has its answer: nothing added.
        let may_be_zero = key == "deliver_p50_ms" || key.starts_with("added_");
        if (key.ends_with("_ms") || key.ends_with("_per_s")) && !may_be_zero {
            assert!(*value > 0.0, "{key} = {value} in {line}");
        }
    }
    let process = r
        .process
        .unwrap_or_else(|| panic!("expected process figures in {line}"));
    assert!(process.peak_rss_kib_after > 0, "{line}");
    // VmHWM is folded from the current RSS lazily by the kernel, so two reads can differ
    // slightly downwards; allow 1 MiB.
    assert!(
        process.peak_rss_kib_after + 1024 >= process.peak_rss_kib_before,
        "{line}"
    );
    let parsed: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("expected the JSON line to parse: {e}: {line}"));
    assert_eq!(parsed["scenario"], r.scenario.as_str(), "{line}");
    assert!(!line.contains('\n'), "expected one line: {line}");
}

fn count(r: &Report, key: &str) -> u64 {
    r.count_value(key)
        .unwrap_or_else(|| panic!("expected count `{key}` in {}", r.to_json_line()))
}

fn param(r: &Report, key: &str) -> u64 {
    r.params[key]
        .as_u64()
        .unwrap_or_else(|| panic!("expected numeric param `{key}` in {}", r.to_json_line()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_at_tiny_scale() {
    let started = Instant::now();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_REGISTRATION_SHARED_SECRET", SECRET);
        TestServer::set_env(env, "PARACORD_LOG", "warn");
        livekit(env);
    })
    .await;
    // The harness does not expose the server's pid; the test process's own
    // figures exercise the same /proc reading.
    let me = Some(std::process::id());
    let target = |registration| {
        Target::new(&server.base_url(), registration)
            .unwrap_or_else(|e| panic!("expected a loopback target: {e}"))
            .with_pid(me)
            // Concurrent createRoom calls by one user trip a server bug
            // (identical m.room.create events in the same millisecond); the
            // smoke test checks the tool, not that.
            .with_concurrency(1)
            .and_then(|t| t.with_time_limit(Duration::from_secs(40)))
            .unwrap_or_else(|e| panic!("expected valid knobs: {e}"))
    };

    // Both registration methods.
    let dummy = register(&target(Registration::Dummy), &RegisterParams { users: 2 })
        .await
        .unwrap_or_else(|e| panic!("expected dummy registration to run: {e}"));
    assert_sane(&dummy);
    assert_eq!(count(&dummy, "registered"), 2);
    assert_eq!(count(&dummy, "logged_in"), 2);

    let shared = target(Registration::SharedSecret(SECRET.into()));
    let wrong = target(Registration::SharedSecret("not-the-secret".into()));
    let refused = register(&wrong, &RegisterParams { users: 1 })
        .await
        .unwrap_or_else(|e| panic!("expected the scenario to run: {e}"));
    assert_eq!(
        refused.errors,
        1,
        "a wrong MAC must be refused: {}",
        refused.to_json_line()
    );
    assert_eq!(count(&refused, "registered"), 0);

    // Every scenario, as `paracord-load all --scale tiny` runs them.
    let mut lines = Vec::new();
    let reports = run_all(&shared, Scale::Tiny, None, |r| lines.push(r.to_json_line())).await;
    assert_eq!(lines.len(), reports.len());
    let p = Scale::Tiny.params();
    let find = |name: &str| -> &Report {
        reports
            .iter()
            .find(|r| r.scenario == name)
            .unwrap_or_else(|| panic!("expected a `{name}` report among {lines:#?}"))
    };
    for r in &reports {
        assert_sane(r);
    }

    let r = find("register");
    assert_eq!(count(r, "registered"), p.register.users as u64);
    assert_eq!(count(r, "logged_in"), p.register.users as u64);

    let r = find("rooms");
    assert_eq!(count(r, "rooms_created"), p.rooms.rooms as u64);
    assert_eq!(count(r, "joins"), (p.rooms.rooms * p.rooms.members) as u64);

    let r = find("send");
    assert_eq!(count(r, "messages_sent"), p.send.messages as u64);

    let r = find("fanout");
    assert_eq!(count(r, "messages_sent"), p.fanout.messages as u64);
    assert_eq!(
        count(r, "deliveries"),
        (p.fanout.messages * p.fanout.listeners) as u64
    );
    assert!(r.metrics["deliver_p99_ms"] >= r.metrics["deliver_p50_ms"]);

    let r = find("initial-sync");
    assert_eq!(count(r, "initial_syncs"), 3);
    assert_eq!(count(r, "incremental_syncs"), 10);
    assert!(r.metrics["initial_sync_bytes"] > 0.0);

    let r = find("paginate");
    assert_eq!(count(r, "messages"), p.paginate.history as u64);
    assert!(
        count(r, "events") > p.paginate.history as u64,
        "state events come too"
    );
    assert!(count(r, "pages") >= (p.paginate.history / p.paginate.page) as u64);

    let steps: Vec<&Report> = reports.iter().filter(|r| r.scenario == "growth").collect();
    assert_eq!(steps.len(), p.growth.steps);
    for (i, step) in steps.iter().enumerate() {
        let factor = 1u64 << i;
        assert_eq!(param(step, "factor"), factor);
        assert_eq!(param(step, "rooms"), p.growth.base_rooms as u64 * factor);
        assert_eq!(
            param(step, "history"),
            p.growth.base_history as u64 * factor
        );
        assert_eq!(count(step, "messages_sent"), p.growth.sends as u64);
        assert!(count(step, "events_paginated") > p.growth.base_history as u64 * factor);
    }

    let r = find("search");
    assert_eq!(count(r, "queries"), p.search.queries as u64);
    assert!(count(r, "results") > 0, "searches found nothing");

    let r = find("media");
    assert_eq!(count(r, "uploads"), p.media.uploads as u64);
    assert_eq!(count(r, "downloads"), p.media.uploads as u64);
    assert_eq!(
        count(r, "bytes_downloaded"),
        (p.media.uploads * p.media.size) as u64
    );
    assert_eq!(count(r, "thumbnails"), 10);
    assert!(r.metrics["download_mib_per_s"] > 0.0);

    let r = find("rtc-token");
    let requests = p.rtc_token.requests as u64;
    assert_eq!(count(r, "requests"), requests);
    assert_eq!(count(r, "tokens"), requests);
    // Every request's member id was fresh, and so was the first (setup) token's.
    assert_eq!(count(r, "identities"), requests + 1);
    assert!(r.metrics["tokens_per_s"] > 0.0);
    assert!(r.metrics["get_token_p50_ms"] <= r.metrics["get_token_p95_ms"]);
    assert!(r.metrics["get_token_p95_ms"] <= r.metrics["get_token_p99_ms"]);
    assert_eq!(
        reports.last().map(|r| r.scenario.as_str()),
        Some("rtc-token"),
        "rtc-token runs last"
    );

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "expected the tiny run to take under 60 s, took {:?}",
        started.elapsed()
    );
}

/// The `appservice` scenario against a server started with its registration: every message
/// reaches the tool's receiver; with a wrong hs_token the receiver refuses the transactions
/// and the scenario says so instead of reporting figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appservice_scenario_measures_delivery() {
    let port = paracord_complement::free_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (as_token, hs_token) = ("load-smoke-as-token", "load-smoke-hs-token");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("load.yaml"),
        format!(
            "id: load\nurl: http://{listen}\nas_token: {as_token}\nhs_token: {hs_token}\n\
             sender_localpart: loadbot\nrate_limited: false\nnamespaces:\n  users:\n    \
             - regex: '@loadbot_.*'\n      exclusive: true\n"
        ),
    )
    .unwrap();
    let as_dir = dir.path().display().to_string();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_REGISTRATION_SHARED_SECRET", SECRET);
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &as_dir);
        TestServer::set_env(env, "PARACORD_LOG", "warn");
    })
    .await;
    let target = Target::new(
        &server.base_url(),
        Registration::SharedSecret(SECRET.into()),
    )
    .and_then(|t| t.with_time_limit(Duration::from_secs(30)))
    .unwrap_or_else(|e| panic!("expected a loopback target: {e}"))
    .with_pid(Some(std::process::id()));
    let registration = AppserviceRegistration {
        listen,
        as_token: as_token.into(),
        hs_token: hs_token.into(),
        bot: "loadbot".into(),
    };
    let params = AppserviceParams {
        messages: 40,
        senders: 3,
        registration: registration.clone(),
    };
    let r = appservice(&target, &params)
        .await
        .unwrap_or_else(|e| panic!("expected the appservice scenario to run: {e}"));
    assert_sane(&r);
    assert_eq!(count(&r, "messages_sent"), 40);
    assert_eq!(count(&r, "delivered"), 40);
    assert!(count(&r, "transactions") >= 1);
    assert!(r.metrics["delivered_per_s"] > 0.0);
    assert!(r.metrics["added_p99_ms"] >= r.metrics["added_p50_ms"]);
    assert!(r.metrics["deliver_p99_ms"] >= r.metrics["deliver_p50_ms"]);
    assert!(r.metrics["deliver_p50_ms"] > 0.0);

    let wrong = AppserviceParams {
        registration: AppserviceRegistration {
            hs_token: "not-the-hs-token".into(),
            ..registration
        },
        ..params
    };
    let short = Target::new(
        &server.base_url(),
        Registration::SharedSecret(SECRET.into()),
    )
    .and_then(|t| t.with_time_limit(Duration::from_secs(5)))
    .unwrap_or_else(|e| panic!("expected a loopback target: {e}"));
    let err = appservice(&short, &wrong)
        .await
        .expect_err("transactions with the wrong hs_token must not count");
    assert!(err.to_string().contains("hs_token"), "{err}");
}

/// Against a server that is not a MatrixRTC focus (no LiveKit configured: 404
/// M_UNRECOGNIZED, as Synapse answers) `rtc-token` says so instead of reporting figures or
/// errors, after one user and one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtc_token_is_unsupported_without_a_focus() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_REGISTRATION_SHARED_SECRET", SECRET);
        TestServer::set_env(env, "PARACORD_LOG", "warn");
    })
    .await;
    let target = Target::new(
        &server.base_url(),
        Registration::SharedSecret(SECRET.into()),
    )
    .and_then(|t| t.with_time_limit(Duration::from_secs(30)))
    .unwrap_or_else(|e| panic!("expected a loopback target: {e}"));
    let r = rtc_token(
        &target,
        &RtcTokenParams {
            requests: 50,
            clients: 4,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("expected the scenario to run: {e}"));
    let line = r.to_json_line();
    let why = r
        .unsupported
        .as_deref()
        .unwrap_or_else(|| panic!("expected `unsupported`: {line}"));
    assert!(why.contains("404 M_UNRECOGNIZED"), "{line}");
    assert!(!r.failed, "{line}");
    assert_eq!(r.errors, 0, "{line}");
    assert!(r.metrics.is_empty(), "no figures without tokens: {line}");
    assert!(r.counts.is_empty(), "{line}");
    let parsed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["unsupported"], why, "{line}");
    assert_eq!(parsed["scenario"], "rtc-token", "{line}");
}
