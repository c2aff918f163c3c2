//! Full-text search over room events with tantivy: events are indexed as they are committed,
//! removed when redacted, and the whole index can be rebuilt from the database.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use paracord_core::{Error, Result};
use parking_lot::Mutex;
use serde_json::Value;
use tantivy::{
    collector::{Count, TopDocs},
    directory::MmapDirectory,
    query::{BooleanQuery, Occur, Query, QueryParser, TermQuery},
    schema::{Field, IndexRecordOption, Schema, Value as _, FAST, INDEXED, STORED, STRING, TEXT},
    Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

/// Which content keys to search (`keys` of the request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys {
    pub body: bool,
    pub name: bool,
    pub topic: bool,
}

/// What to look for.
#[derive(Debug, Clone, Copy)]
pub struct SearchQuery<'a> {
    pub term: &'a str,
    pub keys: Keys,
    /// Rooms the searcher may see (already checked).
    pub rooms: &'a [String],
    pub senders: Option<&'a [String]>,
    /// Newest first instead of best first.
    pub recent: bool,
    pub offset: usize,
    pub limit: usize,
    /// Only events with `origin_server_ts` in this range (milliseconds, inclusive).
    pub from_ts: Option<u64>,
    pub until_ts: Option<u64>,
}

/// One hit: `(rank, stream position of the event)`.
pub type Hit = (f32, u64);

struct Fields {
    event_id: Field,
    room_id: Field,
    sender: Field,
    body: Field,
    name: Field,
    topic: Field,
    pos: Field,
    ts: Field,
}

/// A change waiting for the next commit.
enum Pending {
    Add(TantivyDocument),
    Delete(Term),
    Clear,
}

pub struct Search {
    index: Index,
    reader: IndexReader,
    /// Changes since the last commit. An index writer exists only while they are committed:
    /// a resident writer held ~15 MiB (its document channel, arena and column writers) for
    /// an index that changes a few times a second.
    pending: Mutex<Vec<Pending>>,
    /// Serialises commits (one writer at a time holds the index lock).
    commit_lock: Mutex<()>,
    fields: Fields,
    dirty: AtomicBool,
    /// Whether the index was created empty at start (and so needs a rebuild).
    pub created: bool,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("search index: {e}"))
}

impl Search {
    pub fn open(dir: PathBuf) -> Result<Self> {
        let created = !dir.join("meta.json").exists();
        std::fs::create_dir_all(&dir).map_err(err)?;
        let mut sb = Schema::builder();
        let fields = Fields {
            event_id: sb.add_text_field("event_id", STRING | STORED),
            room_id: sb.add_text_field("room_id", STRING),
            sender: sb.add_text_field("sender", STRING),
            body: sb.add_text_field("body", TEXT),
            name: sb.add_text_field("name", TEXT),
            topic: sb.add_text_field("topic", TEXT),
            pos: sb.add_u64_field("pos", INDEXED | STORED | FAST),
            ts: sb.add_u64_field("ts", INDEXED | FAST),
        };
        let schema = sb.build();
        let (index, created) =
            match Index::open_or_create(MmapDirectory::open(&dir).map_err(err)?, schema.clone()) {
                Ok(index) => (index, created),
                Err(e) => {
                    // An index of an older schema: start again; it is rebuilt from the database.
                    tracing::warn!("search index unusable ({e}); recreating it");
                    std::fs::remove_dir_all(&dir).map_err(err)?;
                    std::fs::create_dir_all(&dir).map_err(err)?;
                    let fresh =
                        Index::open_or_create(MmapDirectory::open(&dir).map_err(err)?, schema)
                            .map_err(err)?;
                    (fresh, true)
                }
            };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(Self {
            index,
            reader,
            pending: Mutex::new(Vec::new()),
            commit_lock: Mutex::new(()),
            fields,
            dirty: AtomicBool::new(false),
            created,
        })
    }

    /// Commits pending changes every half second, in the background.
    pub fn start_committer(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if this.dirty.swap(false, Ordering::AcqRel) {
                    let this = this.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = this.commit() {
                            tracing::warn!("search commit failed: {e}");
                        }
                    })
                    .await;
                }
            }
        });
    }

    /// Writes the pending changes: a writer with one indexing thread and tantivy's smallest
    /// memory budget, dropped (after its merges) once the commit is done.
    pub fn commit(&self) -> Result<()> {
        let _guard = self.commit_lock.lock();
        let ops = std::mem::take(&mut *self.pending.lock());
        if ops.is_empty() {
            return Ok(());
        }
        let mut writer: IndexWriter = self
            .index
            .writer_with_num_threads(1, 15_000_000)
            .map_err(err)?;
        for op in ops {
            match op {
                Pending::Add(doc) => {
                    writer.add_document(doc).map_err(err)?;
                }
                Pending::Delete(term) => {
                    writer.delete_term(term);
                }
                Pending::Clear => {
                    writer.delete_all_documents().map_err(err)?;
                }
            }
        }
        writer.commit().map_err(err)?;
        writer.wait_merging_threads().map_err(err)?;
        self.reader.reload().map_err(err)
    }

    /// Indexes an event if it has searchable text (`content.body`, `.name`, `.topic`).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        event_id: &str,
        room_id: &str,
        sender: &str,
        kind: &str,
        content: &Value,
        pos: u64,
        ts: u64,
    ) -> Result<()> {
        let text = |k: &str| content.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let (body, name, topic) = match kind {
            "m.room.message" => (text("body"), None, None),
            "m.room.name" => (None, text("name"), None),
            "m.room.topic" => (None, None, text("topic")),
            _ => (None, None, None),
        };
        if body.is_none() && name.is_none() && topic.is_none() {
            return Ok(());
        }
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.event_id, event_id);
        doc.add_text(f.room_id, room_id);
        doc.add_text(f.sender, sender);
        if let Some(b) = body {
            doc.add_text(f.body, b);
        }
        if let Some(n) = name {
            doc.add_text(f.name, n);
        }
        if let Some(t) = topic {
            doc.add_text(f.topic, t);
        }
        doc.add_u64(f.pos, pos);
        doc.add_u64(f.ts, ts);
        self.pending.lock().push(Pending::Add(doc));
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes a (redacted) event.
    pub fn remove(&self, event_id: &str) {
        self.pending
            .lock()
            .push(Pending::Delete(Term::from_field_text(
                self.fields.event_id,
                event_id,
            )));
        self.dirty.store(true, Ordering::Release);
    }

    /// Deletes everything (before a rebuild).
    pub fn clear(&self) -> Result<()> {
        self.pending.lock().push(Pending::Clear);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Events matching `term` in `rooms`, best first (or newest first when `recent`), from
    /// `offset`, at most `limit`; with the total number of matches.
    pub fn query(&self, q: &SearchQuery<'_>) -> Result<(Vec<Hit>, usize)> {
        let SearchQuery {
            term,
            keys,
            rooms,
            senders,
            recent,
            offset,
            limit,
            from_ts,
            until_ts,
        } = *q;
        let f = &self.fields;
        let mut default_fields = Vec::new();
        if keys.body {
            default_fields.push(f.body);
        }
        if keys.name {
            default_fields.push(f.name);
        }
        if keys.topic {
            default_fields.push(f.topic);
        }
        if default_fields.is_empty() || rooms.is_empty() {
            return Ok((vec![], 0));
        }
        let parser = QueryParser::for_index(&self.index, default_fields);
        let (text_query, _) = parser.parse_query_lenient(term);
        let in_rooms: Vec<(Occur, Box<dyn Query>)> = rooms
            .iter()
            .map(|r| {
                (
                    Occur::Should,
                    Box::new(TermQuery::new(
                        Term::from_field_text(f.room_id, r),
                        IndexRecordOption::Basic,
                    )) as Box<dyn Query>,
                )
            })
            .collect();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, text_query),
            (Occur::Must, Box::new(BooleanQuery::new(in_rooms))),
        ];
        if let Some(s) = senders {
            let by: Vec<(Occur, Box<dyn Query>)> = s
                .iter()
                .map(|u| {
                    (
                        Occur::Should,
                        Box::new(TermQuery::new(
                            Term::from_field_text(f.sender, u),
                            IndexRecordOption::Basic,
                        )) as Box<dyn Query>,
                    )
                })
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(by))));
        }
        if from_ts.is_some() || until_ts.is_some() {
            use std::ops::Bound;
            let bound = |t: Option<u64>| {
                t.map_or(Bound::Unbounded, |t| {
                    Bound::Included(Term::from_field_u64(f.ts, t))
                })
            };
            clauses.push((
                Occur::Must,
                Box::new(tantivy::query::RangeQuery::new(
                    bound(from_ts),
                    bound(until_ts),
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit.max(1)).and_offset(offset);
        let count = searcher.search(&query, &Count).map_err(err)?;
        let addresses: Vec<(f32, tantivy::DocAddress)> = if recent {
            searcher
                .search(&query, &top.order_by_fast_field::<u64>("pos", Order::Desc))
                .map_err(err)?
                .into_iter()
                .map(|(_, a)| (0.0, a))
                .collect()
        } else {
            searcher
                .search(&query, &top.order_by_score())
                .map_err(err)?
        };
        let mut hits = Vec::new();
        for (score, address) in addresses {
            let doc: TantivyDocument = searcher.doc(address).map_err(err)?;
            if let Some(pos) = doc.get_first(f.pos).and_then(|v| v.as_u64()) {
                hits.push((score, pos));
            }
        }
        Ok((hits, count))
    }
}
