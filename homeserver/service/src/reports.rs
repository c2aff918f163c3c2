//! Reports of rooms, events and users, kept for the server's admins.

use std::sync::Arc;

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::UserId;
use serde_json::{json, Value};

paracord_storage::key! {
    /// The key of `reportid_report`: `received_ms report_id`, so reports are in the order
    /// they came.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct ReportKey<'a> {
        ts: u64,
        id: last_str,
    }
}

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
            ReportKey {
                ts: now_ms(),
                id: &id,
            }
            .encode(),
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

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn report_key_round_trips_and_layout_is_stable() {
        let key = ReportKey {
            ts: 0x0102,
            id: "abc",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"\0\0\0\0\0\0\x01\x02abc");
        assert_eq!(bytes, KeyBuf::new().u64(0x0102).last_str("abc").into_vec());
        assert_eq!(ReportKey::decode(&bytes).unwrap(), key);
        assert!(ReportKey::decode(&[0, 0, 1]).is_err());
    }
}
