//! The background task that deletes what the server keeps only for a while: expired stored
//! transaction answers and transaction ids ([`crate::expiry`]) and to-device messages their
//! device never collected ([`crate::e2ee::E2ee::expire_to_device`]). It runs a minute after
//! the start and then every [`INTERVAL`], and stops when the server shuts down.

use std::{sync::Arc, time::Duration};

use paracord_core::time::now_ms;
use paracord_storage::Db;

use crate::{e2ee::E2ee, stream::Stream};

/// Time between two rounds.
pub const INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Time from the start to the first round (the start has enough to do).
const FIRST_ROUND: Duration = Duration::from_secs(60);

/// Spawns the task on the current tokio runtime; without one, logs an error and does nothing.
pub fn start(db: Arc<Db>, e2ee: Arc<E2ee>, stream: Arc<Stream>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::error!("housekeeping was started outside a tokio runtime");
        return;
    };
    handle.spawn(async move {
        let shutdown = stream.notifier().shutting_down();
        tokio::pin!(shutdown);
        let mut wait = FIRST_ROUND;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = INTERVAL;
            let (db, e2ee) = (db.clone(), e2ee.clone());
            let round = tokio::task::spawn_blocking(move || round(&db, &e2ee)).await;
            if let Err(e) = round {
                tracing::error!("housekeeping round failed: {e}");
            }
        }
    });
}

/// One round: everything that has expired by now goes.
fn round(db: &Db, e2ee: &E2ee) {
    let now = now_ms();
    if let Err(e) = crate::expiry::adopt_existing(db, now) {
        tracing::error!("cannot schedule stored transaction answers for expiry: {e}");
    }
    match crate::expiry::sweep_all(db, now) {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "deleted expired transaction answers and ids"),
        Err(e) => tracing::error!("cannot delete expired transaction answers: {e}"),
    }
    if let Err(e) = e2ee.expire_to_device(now) {
        tracing::error!("cannot delete expired to-device messages: {e}");
    }
}
