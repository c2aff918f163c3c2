//! Reports of rooms, events and users, kept for the server's admins.

use std::sync::Arc;

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, Table};
use ruma::UserId;
use serde_json::{json, Value};

pub struct Reports {
    db: Arc<Db>,
}

/// What is reported.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Room(&'a str),
    Event { room_id: &'a str, event_id: &'a str },
    User(&'a str),
}

const MAX_REASON: usize = 1000;

impl Reports {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    pub fn report(
        &self,
        reporter: &UserId,
        subject: Subject<'_>,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<()> {
        if reason.is_some_and(|r| r.len() > MAX_REASON) {
            return Err(Error::invalid_param("reason too long"));
        }
        let mut record = json!({ "reporter": reporter, "reason": reason, "ts": now_ms() });
        match subject {
            Subject::Room(r) => record["room_id"] = json!(r),
            Subject::Event { room_id, event_id } => {
                record["room_id"] = json!(room_id);
                record["event_id"] = json!(event_id);
            }
            Subject::User(u) => record["user_id"] = json!(u),
        }
        if let Some(s) = score {
            record["score"] = json!(s);
        }
        let id: String = crate::random::random_string(8);
        let mut batch = Batch::new();
        batch.put(
            Table::ReportidReport,
            KeyBuf::new().u64(now_ms()).last_str(&id).into_vec(),
            serde_json::to_vec(&record)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Every report, oldest first (for the admin API to come).
    pub fn all(&self) -> Result<Vec<Value>> {
        self.db
            .scan_prefix(Table::ReportidReport, b"")?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(Error::from))
            .collect()
    }
}
