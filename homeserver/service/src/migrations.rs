//! One-time fills of indexes added after databases were written with the code before them.

use paracord_core::Result;
use paracord_storage::{Batch, Db, Table};

/// Runs `fill` unless it ran to its end on this database before (a marker row named
/// `marker` in `global_value` remembers it). `fill` writes idempotent rows, so a fill cut
/// short by a crash is simply run again at the next start. Returns what `fill` counted (0
/// when it had run before).
pub(crate) fn once(db: &Db, marker: &[u8], fill: impl FnOnce() -> Result<usize>) -> Result<usize> {
    if db.exists(Table::GlobalValue, marker)? {
        return Ok(0);
    }
    let count = fill()?;
    let mut batch = Batch::new();
    batch.put(Table::GlobalValue, marker.to_vec(), b"1".to_vec());
    db.write(batch)?;
    Ok(count)
}
