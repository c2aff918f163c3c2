//! The guild host's memory of relayed requests (spec/rest.md §3): the answer to each
//! `(origin, txnId)`, so that a relay repeated after a lost answer is not carried out twice.
//! Answers are kept for [`crate::expiry::TRANSACTION_TTL_MS`].

use paracord_core::{time::now_ms, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::ServerName;
use serde_json::Value;

paracord_storage::key! {
    /// The key of `origintxn_relay` (the answer to a relayed request): `origin 0xFF txn_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct RelayKey<'a> {
        origin: str,
        txn_id: last_str,
    }
}

fn key(origin: &ServerName, txn_id: &str) -> Vec<u8> {
    RelayKey {
        origin: origin.as_str(),
        txn_id,
    }
    .encode()
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

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn relay_key_round_trips_and_layout_is_stable() {
        let key = RelayKey {
            origin: "x.test",
            txn_id: "t1",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"x.test\xFFt1");
        assert_eq!(bytes, KeyBuf::new().str("x.test").last_str("t1").into_vec());
        assert_eq!(RelayKey::decode(&bytes).unwrap(), key);
        assert!(RelayKey::decode(b"no separator").is_err());
    }
}
