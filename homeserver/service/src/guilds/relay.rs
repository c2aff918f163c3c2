//! The guild host's memory of relayed requests (spec/rest.md §3): the answer to each
//! `(origin, txnId)`, so that a relay repeated after a lost answer is not carried out twice.
//! Answers are kept for [`crate::expiry::TRANSACTION_TTL_MS`].

use paracord_core::{time::now_ms, Result};
use paracord_storage::{Batch, Db, KeyBuf, Table};
use ruma::ServerName;
use serde_json::Value;

fn key(origin: &ServerName, txn_id: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(origin.as_str())
        .last_str(txn_id)
        .into_vec()
}

/// The stored answer to an earlier relay with this transaction id, if any.
pub fn answered(db: &Db, origin: &ServerName, txn_id: &str) -> Result<Option<Value>> {
    match db.get(Table::OrigintxnRelay, &key(origin, txn_id))? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Remembers the answer to a relay.
pub fn remember(db: &Db, origin: &ServerName, txn_id: &str, answer: &Value) -> Result<()> {
    let mut batch = Batch::new();
    let key = key(origin, txn_id);
    crate::expiry::schedule(
        &mut batch,
        Table::OrigintxnRelay,
        &key,
        now_ms().saturating_add(crate::expiry::TRANSACTION_TTL_MS),
    );
    batch.put(Table::OrigintxnRelay, key, serde_json::to_vec(answer)?);
    Ok(db.write(batch)?)
}
