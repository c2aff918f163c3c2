//! The user directory's rows: who `/user_directory/search` can find, under which name.
//!
//! One row per user (`userid_directory`): this server's users under their global profile
//! (written with the account, removed when it is deactivated), other servers' users under
//! their newest join event seen here. A search reads these rows, not every room's members;
//! whether the searcher may see a user (a room shared with them or a public room) is decided
//! at search time ([`crate::rooms::Rooms::search_users`]).

use paracord_core::Result;
use paracord_storage::{db::Entry as Row, Batch, Db, Table};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

/// A user's directory row.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// Writes `user`'s row.
pub(crate) fn put(batch: &mut Batch, user: &UserId, entry: &Entry) -> Result<()> {
    batch.put(
        Table::UseridDirectory,
        user.as_bytes().to_vec(),
        serde_json::to_vec(entry)?,
    );
    Ok(())
}

/// Up to `limit` rows in user id order, from the first whose key is at least `lower` on. A
/// row may not decode ([`decode`] says); the next page starts after the last row returned.
pub(crate) fn page(db: &Db, lower: &[u8], limit: usize) -> Result<Vec<Row>> {
    Ok(db.scan(Table::UseridDirectory, b"", lower, None, false, limit)?)
}

/// The user and entry of a row of [`page`]; `None` for a row that does not decode.
pub(crate) fn decode(key: &[u8], value: &[u8]) -> Option<(OwnedUserId, Entry)> {
    let user = OwnedUserId::try_from(String::from_utf8_lossy(key).into_owned()).ok()?;
    let entry = serde_json::from_slice(value).ok()?;
    Some((user, entry))
}

/// Removes `user` from the directory.
pub(crate) fn remove(batch: &mut Batch, user: &UserId) {
    batch.delete(Table::UseridDirectory, user.as_bytes().to_vec());
}

/// The row of a member event's content (`displayname`, `avatar_url`; anything else ignored).
pub(crate) fn entry_of_member(content: &serde_json::Value) -> Entry {
    let field = |k: &str| content.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Entry {
        displayname: field("displayname"),
        avatar_url: field("avatar_url"),
    }
}
