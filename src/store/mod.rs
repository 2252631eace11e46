//! The store: one SQLite file (WAL, busy timeout, foreign keys) shared by every job. All SQL of
//! the project lives in this module and its children; the schema is `sql/NNNN_*.sql`, applied
//! in order when the store opens and never edited once shipped.

mod boletos;
mod invoices;
mod operations;
mod queue;
mod report;
mod runs;
mod subscriptions;

pub use boletos::*;
pub use invoices::*;
pub use operations::*;
pub use queue::*;
pub use report::*;
pub use runs::*;
pub use subscriptions::*;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("../../sql/0001_runs.sql")),
        M::up(include_str!("../../sql/0002_invoices.sql")),
        M::up(include_str!("../../sql/0003_boletos.sql")),
        M::up(include_str!("../../sql/0004_sync_queue.sql")),
        M::up(include_str!("../../sql/0005_subscriptions.sql")),
        M::up(include_str!("../../sql/0006_operations.sql")),
        M::up(include_str!("../../sql/0007_run_progress.sql")),
        // 0008 and 0009 are other branches' (merged before this one).
        M::up(include_str!("../../sql/0010_app_data.sql")),
    ])
});

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            crate::files::create_private_dir(dir)
                .with_context(|| format!("cannot create the store's folder `{}`", dir.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open the store `{}`", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Every write transaction takes the write lock at BEGIN, where the busy timeout waits
        // for it; a deferred one that reads first could not upgrade when another process wrote
        // meanwhile, and would fail at once with "database is locked".
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("cannot switch the store `{}` to WAL", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        crash_point(&conn)?;
        MIGRATIONS.to_latest(&mut conn).with_context(|| {
            format!(
                "cannot bring the schema of `{}` up to date (is it a crm-jobs store, written by a newer version?)",
                path.display()
            )
        })?;
        crate::files::make_private(path).ok();
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs SQLite's integrity check; `ok` when sound.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// The crash suite's hook (debug builds only): with `CRM_JOBS_TEST_ABORT_AT_COMMIT=N`, the
/// process aborts inside its N-th commit (counted over every connection), before that commit is
/// durable: a kill -9 at an exact store write.
#[cfg(debug_assertions)]
fn crash_point(conn: &Connection) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    if let Some(n) = std::env::var("CRM_JOBS_TEST_ABORT_AT_COMMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        conn.commit_hook(Some(move || {
            if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                std::process::abort();
            }
            false
        }))?;
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
fn crash_point(_: &Connection) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }
}
