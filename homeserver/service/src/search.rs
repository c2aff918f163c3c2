//! Full-text search over room events: an inverted index in RocksDB, written in the same batch
//! as the event it indexes (so search is never behind the timeline and survives a crash with
//! it), removed in the batch that redacts the event, and rebuildable from the stored events.
//!
//! Text is split like a simple full-text tokenizer does: runs of letters and digits,
//! lowercased; tokens longer than 40 bytes are dropped. A query matches events containing any
//! of its tokens; the rank is BM25-like (term frequency, saturated, times the rarity of the
//! token among the matches).

use std::{collections::HashMap, sync::Arc};

use paracord_core::{Error, Result};
use paracord_storage::{Batch, Db, KeyReader, Table};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which fields of an event a query looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys {
    pub body: bool,
    pub name: bool,
    pub topic: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct SearchQuery<'a> {
    pub term: &'a str,
    pub keys: Keys,
    /// The rooms to search, each with the last stream position the searcher may find in it
    /// (a user who left finds nothing sent after their leave, and it is not counted).
    pub rooms: &'a [(String, Option<u64>)],
    pub senders: Option<&'a [String]>,
    pub recent: bool,
    pub offset: usize,
    pub limit: usize,
    pub from_ts: Option<u64>,
    pub until_ts: Option<u64>,
}

/// A match: its score and the event's stream position (short id).
pub type Hit = (f32, u64);

/// Longest indexed token, in bytes.
const MAX_TOKEN_BYTES: usize = 40;
/// Distinct tokens indexed per event.
const MAX_TOKENS_PER_EVENT: usize = 1024;
/// Distinct tokens a query looks up.
const MAX_QUERY_TOKENS: usize = 32;
/// Index entries a query reads at most (bounds the work of a very common word).
const MAX_SCANNED: usize = 200_000;
/// Marks that the index tables are filled (absent: rebuild from the events at start).
const READY_KEY: &[u8] = b"search_index_version";
const INDEX_VERSION: &[u8] = b"1";

const FIELD_BODY: u8 = 1;
const FIELD_NAME: u8 = 2;
const FIELD_TOPIC: u8 = 4;

/// One posting: `token 0xFF room 0xFF pos` → this, as `ts (u64 BE) fields (u8) tf (u16 BE)
/// sender (UTF-8)`.
#[derive(Debug, PartialEq, Eq)]
struct Posting {
    /// `origin_server_ts`
    ts: u64,
    /// FIELD_* bits of the fields the token occurs in.
    fields: u8,
    /// Occurrences of the token in the event (capped).
    tf: u16,
    sender: String,
}

impl Posting {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.sender.len());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.push(self.fields);
        out.extend_from_slice(&self.tf.to_be_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 11 {
            return Err(err("short posting"));
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[..8]);
        Ok(Self {
            ts: u64::from_be_bytes(ts),
            fields: bytes[8],
            tf: u16::from_be_bytes([bytes[9], bytes[10]]),
            sender: String::from_utf8_lossy(&bytes[11..]).into_owned(),
        })
    }
}

/// What was indexed for an event, so redaction can remove it: `pos` → this.
#[derive(Debug, Serialize, Deserialize)]
struct Indexed {
    room: String,
    tokens: Vec<String>,
}

pub struct Search {
    db: Arc<Db>,
    /// Whether the index was missing at start (and so needs a rebuild).
    pub created: bool,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("search index: {e}"))
}

/// Splits text into lowercased runs of letters and digits.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .filter(|t| t.len() <= MAX_TOKEN_BYTES)
}

paracord_storage::key! {
    /// The key of `tokenroompos_search` (a posting): `token 0xFF room_id 0xFF stream_pos`. The
    /// postings of a token in a room are contiguous and in stream order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct PostingKey<'a> {
        token: str,
        room_id: str => room_prefix,
        pos: u64,
    }
}

impl PostingKey<'_> {
    /// The stream position of a key, without checking what follows it.
    fn decode_pos(key: &[u8]) -> Result<u64, paracord_storage::StorageError> {
        let mut r = KeyReader::new(key);
        r.str()?;
        r.str()?;
        r.u64()
    }
}

fn posting_key(token: &str, room: &str, pos: u64) -> Vec<u8> {
    PostingKey {
        token,
        room_id: room,
        pos,
    }
    .encode()
}

impl Search {
    pub fn open(db: Arc<Db>) -> Result<Self> {
        let created = db
            .get(Table::GlobalValue, READY_KEY)
            .map_err(err)?
            .as_deref()
            != Some(INDEX_VERSION);
        Ok(Self { db, created })
    }

    /// Adds the index entries of an event to `batch` (the batch that stores the event).
    /// Events without searchable text (`content.body`, `.name`, `.topic`) add nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn index_into(
        &self,
        batch: &mut Batch,
        room_id: &str,
        sender: &str,
        kind: &str,
        content: &Value,
        pos: u64,
        ts: u64,
    ) -> Result<()> {
        let text = |k: &str| content.get(k).and_then(Value::as_str);
        let (field, text) = match kind {
            "m.room.message" => (FIELD_BODY, text("body")),
            "m.room.name" => (FIELD_NAME, text("name")),
            "m.room.topic" => (FIELD_TOPIC, text("topic")),
            _ => return Ok(()),
        };
        let Some(text) = text else {
            return Ok(());
        };
        let mut counts: HashMap<String, u16> = HashMap::new();
        for token in tokenize(text) {
            if counts.len() >= MAX_TOKENS_PER_EVENT && !counts.contains_key(&token) {
                continue;
            }
            let n = counts.entry(token).or_default();
            *n = n.saturating_add(1);
        }
        if counts.is_empty() {
            return Ok(());
        }
        let mut tokens = Vec::with_capacity(counts.len());
        for (token, tf) in counts {
            batch.put(
                Table::TokenroomposSearch,
                posting_key(&token, room_id, pos),
                Posting {
                    ts,
                    fields: field,
                    tf,
                    sender: sender.to_owned(),
                }
                .encode(),
            );
            tokens.push(token);
        }
        batch.put(
            Table::ShorteventidSearchtokens,
            pos.to_be_bytes().to_vec(),
            serde_json::to_vec(&Indexed {
                room: room_id.to_owned(),
                tokens,
            })?,
        );
        Ok(())
    }

    /// Adds to `batch` the removal of an event's index entries (it is being redacted).
    pub fn unindex_into(&self, batch: &mut Batch, pos: u64) -> Result<()> {
        let Some(v) = self
            .db
            .get(Table::ShorteventidSearchtokens, &pos.to_be_bytes())
            .map_err(err)?
        else {
            return Ok(());
        };
        let indexed: Indexed = serde_json::from_slice(&v)?;
        for token in &indexed.tokens {
            batch.delete(
                Table::TokenroomposSearch,
                posting_key(token, &indexed.room, pos),
            );
        }
        batch.delete(Table::ShorteventidSearchtokens, pos.to_be_bytes().to_vec());
        Ok(())
    }

    /// Deletes the whole index (before a rebuild).
    pub fn clear(&self) -> Result<()> {
        for table in [Table::TokenroomposSearch, Table::ShorteventidSearchtokens] {
            let mut batch = Batch::new();
            for (k, _) in self.db.scan_prefix(table, b"").map_err(err)? {
                batch.delete(table, k.to_vec());
                if batch.len() >= 10_000 {
                    self.db.write(std::mem::take(&mut batch)).map_err(err)?;
                }
            }
            self.db.write(batch).map_err(err)?;
        }
        let mut batch = Batch::new();
        batch.delete(Table::GlobalValue, READY_KEY.to_vec());
        self.db.write(batch).map_err(err)
    }

    /// Records that the index is complete (after a rebuild).
    pub fn mark_ready(&self) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::GlobalValue,
            READY_KEY.to_vec(),
            INDEX_VERSION.to_vec(),
        );
        self.db.write(batch).map_err(err)
    }

    /// Events matching `term` in `rooms`, best first (or newest first when `recent`), from
    /// `offset`, at most `limit`; with the total number of matches.
    pub fn query(&self, q: &SearchQuery<'_>) -> Result<(Vec<Hit>, usize)> {
        let mut wanted_fields = 0u8;
        if q.keys.body {
            wanted_fields |= FIELD_BODY;
        }
        if q.keys.name {
            wanted_fields |= FIELD_NAME;
        }
        if q.keys.topic {
            wanted_fields |= FIELD_TOPIC;
        }
        let mut tokens: Vec<String> = Vec::new();
        for t in tokenize(q.term) {
            if !tokens.contains(&t) && tokens.len() < MAX_QUERY_TOKENS {
                tokens.push(t);
            }
        }
        if wanted_fields == 0 || q.rooms.is_empty() || tokens.is_empty() {
            return Ok((vec![], 0));
        }
        // Per token: the matching events and the token's count in each.
        let mut per_token: Vec<Vec<(u64, u16)>> = Vec::with_capacity(tokens.len());
        let mut scanned = 0usize;
        for token in &tokens {
            let mut matches = Vec::new();
            for (room, until) in q.rooms {
                if scanned >= MAX_SCANNED {
                    break;
                }
                let prefix = PostingKey::room_prefix(token, room);
                // Postings are visited in place: a common token can have many thousands.
                let mut bad = None;
                scanned += self
                    .db
                    .for_each_prefix(
                        Table::TokenroomposSearch,
                        &prefix,
                        MAX_SCANNED - scanned,
                        |k, v| {
                            let pos = PostingKey::decode_pos(k);
                            let (pos, p) = match (pos, Posting::decode(v)) {
                                (Ok(pos), Ok(p)) => (pos, p),
                                (Err(e), _) => {
                                    bad = Some(err(e));
                                    return Ok(());
                                }
                                (_, Err(e)) => {
                                    bad = Some(e);
                                    return Ok(());
                                }
                            };
                            if p.fields & wanted_fields != 0
                                && !until.is_some_and(|u| pos > u)
                                && q.from_ts.is_none_or(|f| p.ts >= f)
                                && q.until_ts.is_none_or(|u| p.ts <= u)
                                && q.senders.is_none_or(|s| s.contains(&p.sender))
                            {
                                matches.push((pos, p.tf));
                            }
                            Ok(())
                        },
                    )
                    .map_err(err)?;
                if let Some(e) = bad {
                    return Err(e);
                }
            }
            per_token.push(matches);
        }
        // Every token must match (as other servers' full-text search does: "message 4" finds
        // the fourth message, not every message).
        let mut in_all: HashMap<u64, usize> = HashMap::new();
        for matches in &per_token {
            let mut seen: Vec<u64> = matches.iter().map(|(p, _)| *p).collect();
            seen.sort_unstable();
            seen.dedup();
            for pos in seen {
                *in_all.entry(pos).or_default() += 1;
            }
        }
        for matches in &mut per_token {
            matches.retain(|(pos, _)| in_all.get(pos) == Some(&tokens.len()));
        }
        // BM25-like: saturated term frequency times the token's rarity among the matches.
        let mut scores: HashMap<u64, f32> = HashMap::new();
        let distinct: usize = {
            let mut all: Vec<u64> = per_token.iter().flatten().map(|(p, _)| *p).collect();
            all.sort_unstable();
            all.dedup();
            all.len()
        };
        for matches in &per_token {
            if matches.is_empty() {
                continue;
            }
            let df = matches.len() as f32;
            let idf = (1.0 + (distinct as f32 - df + 0.5) / (df + 0.5)).ln();
            for (pos, tf) in matches {
                let tf = f32::from(*tf);
                *scores.entry(*pos).or_default() += idf.max(0.01) * (tf * 2.2) / (tf + 1.2);
            }
        }
        let count = scores.len();
        let mut hits: Vec<Hit> = scores.into_iter().map(|(pos, s)| (s, pos)).collect();
        if q.recent {
            hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
            for h in &mut hits {
                h.0 = 0.0;
            }
        } else {
            hits.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        }
        let hits = hits.into_iter().skip(q.offset).take(q.limit).collect();
        Ok((hits, count))
    }
}

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn posting_key_round_trips_and_layout_is_stable() {
        let bytes = PostingKey {
            token: "hello",
            room_id: "!r:x",
            pos: 0x0102,
        }
        .encode();
        assert_eq!(bytes, b"hello\xFF!r:x\xFF\0\0\0\0\0\0\x01\x02");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("hello")
                .str("!r:x")
                .u64(0x0102)
                .into_vec()
        );
        assert_eq!(PostingKey::decode_pos(&bytes).unwrap(), 0x0102);
        assert!(bytes.starts_with(&PostingKey::room_prefix("hello", "!r:x")));
        assert!(!bytes.starts_with(&PostingKey::room_prefix("hell", "!r:x")));
        assert!(PostingKey::decode_pos(b"hello\xFF!r:x\xFF\x01").is_err());
    }

    #[test]
    fn postings_sort_by_position_within_a_room() {
        let key = |pos| {
            PostingKey {
                token: "t",
                room_id: "!r:x",
                pos,
            }
            .encode()
        };
        let mut keys = [key(1 << 40), key(256), key(255)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| PostingKey::decode_pos(k).unwrap())
            .collect();
        assert_eq!(decoded, [255, 256, 1 << 40]);
    }

    #[test]
    fn postings_round_trip() {
        let p = Posting {
            ts: 1_700_000_000_000,
            fields: FIELD_NAME,
            tf: 3,
            sender: "@ü:x".to_owned(),
        };
        assert_eq!(Posting::decode(&p.encode()).ok(), Some(p));
        assert!(Posting::decode(&[1, 2]).is_err());
    }

    #[test]
    fn tokens_are_lowercased_runs_of_letters_and_digits() {
        let t: Vec<String> = tokenize("Hello, wörld! x2 -- ÉTÉ").collect();
        assert_eq!(t, ["hello", "wörld", "x2", "été"]);
        let long = "a".repeat(41);
        assert_eq!(tokenize(&long).count(), 0);
    }

    fn db() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
        let db = Db::open(&dir.path().join("db")).unwrap_or_else(|e| unreachable!("db: {e}"));
        (dir, Arc::new(db))
    }

    fn index(s: &Search, db: &Db, room: &str, pos: u64, body: &str) {
        let mut b = Batch::new();
        let content = serde_json::json!({ "body": body });
        s.index_into(
            &mut b,
            room,
            "@a:x",
            "m.room.message",
            &content,
            pos,
            pos * 10,
        )
        .unwrap_or_else(|e| unreachable!("index: {e}"));
        db.write(b).unwrap_or_else(|e| unreachable!("write: {e}"));
    }

    fn query(
        s: &Search,
        term: &str,
        rooms: &[(String, Option<u64>)],
        recent: bool,
    ) -> (Vec<u64>, usize) {
        let (hits, n) = s
            .query(&SearchQuery {
                term,
                keys: Keys {
                    body: true,
                    name: true,
                    topic: true,
                },
                rooms,
                senders: None,
                recent,
                offset: 0,
                limit: 10,
                from_ts: None,
                until_ts: None,
            })
            .unwrap_or_else(|e| unreachable!("query: {e}"));
        (hits.into_iter().map(|(_, p)| p).collect(), n)
    }

    #[test]
    fn ranks_by_matches_and_forgets_redacted_events() {
        let (_dir, db) = db();
        let s = Search::open(db.clone()).unwrap_or_else(|e| unreachable!("open: {e}"));
        let rooms = vec![("!r:x".to_owned(), None)];
        index(&s, &db, "!r:x", 1, "apple banana");
        index(&s, &db, "!r:x", 2, "apple apple apple");
        index(&s, &db, "!r:x", 3, "cherry");
        index(&s, &db, "!other:x", 4, "apple");
        let (hits, n) = query(&s, "Apple", &rooms, false);
        assert_eq!((hits.as_slice(), n), ([2, 1].as_slice(), 2));
        // Issue 14: every word must match.
        let (hits, n) = query(&s, "banana apple", &rooms, false);
        assert_eq!(
            (hits.as_slice(), n),
            ([1].as_slice(), 1),
            "both words, or nothing"
        );
        assert_eq!(query(&s, "banana cherry", &rooms, false).1, 0);
        let (hits, _) = query(&s, "apple", &rooms, true);
        assert_eq!(hits, [2, 1]);
        // Issue 15: nothing after a room's bound is found or counted.
        let until_1 = [("!r:x".to_owned(), Some(1))];
        assert_eq!(query(&s, "apple", &until_1, false), (vec![1], 1));
        let mut b = Batch::new();
        s.unindex_into(&mut b, 2)
            .unwrap_or_else(|e| unreachable!("unindex: {e}"));
        db.write(b).unwrap_or_else(|e| unreachable!("write: {e}"));
        assert_eq!(query(&s, "apple", &rooms, false).0, [1]);
        s.clear().unwrap_or_else(|e| unreachable!("clear: {e}"));
        assert_eq!(query(&s, "apple", &rooms, false).1, 0);
    }
}
