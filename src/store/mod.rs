//! The store: one SQLite file (WAL, busy timeout, foreign keys) shared by every job. All SQL of
//! the project lives in this module and its children; the schema is `sql/NNNN_*.sql`, applied
//! in order when the store opens and never edited once shipped.

mod boletos;
mod invoices;
mod operations;
mod queue;
mod report;
mod runs;
pub mod states;
mod subscriptions;

pub use boletos::*;
pub use invoices::*;
pub use operations::*;
pub use queue::*;
pub use report::*;
pub use runs::*;
pub use states::*;
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
        M::up(include_str!("../../sql/0008_invoice_pdfs_apart.sql")),
        M::up(include_str!("../../sql/0009_sync_sent_and_pause.sql")),
        M::up(include_str!("../../sql/0010_app_data.sql")),
        M::up(include_str!("../../sql/0011_retention_indexes.sql")),
        M::up(include_str!("../../sql/0012_run_reference_indexes.sql")),
    ])
});

/// A write made of several statements: a transaction of its own, or, inside
/// [`Store::in_one_transaction`], the caller's (an error there rolls the whole of it back, so
/// no savepoint is needed, nor its statement journal per call).
pub(crate) enum WriteTx<'a> {
    Own(rusqlite::Transaction<'a>),
    Nested(&'a Connection),
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            WriteTx::Own(t) => t,
            WriteTx::Nested(c) => c,
        }
    }
}

impl WriteTx<'_> {
    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        match self {
            WriteTx::Own(t) => t.commit(),
            WriteTx::Nested(_) => Ok(()),
        }
    }
}

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
        // SQLite gives the `-wal` and `-shm` files the mode of the store file: a new store is
        // created private (0600) before SQLite opens it, whatever the umask, so that none of
        // the three files that hold CPFs and names is ever readable by others.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map(drop)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("cannot create the store `{}`", path.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open the store `{}`", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Every write transaction takes the write lock at BEGIN, where the busy timeout waits
        // for it; a deferred one that reads first could not upgrade when another process wrote
        // meanwhile, and would fail at once with "database is locked".
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // A new store gives its free pages back after cleanup (`incremental_vacuum`); this
        // must be set before the first table exists. Older stores are converted by cleanup.
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages == 0 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
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
        // A store made by an older version may have left its WAL files readable by others.
        for file in [
            path.to_path_buf(),
            sidecar(path, "-wal"),
            sidecar(path, "-shm"),
        ] {
            if file.exists() {
                crate::files::make_private(&file).ok();
            }
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the store for a command that only reads (`status`, `export`, `report`, a
    /// `--dry-run`): as [`Store::open`] when this user may write it (so that a store made by an
    /// older version is brought up to date), and otherwise read-only, so that a store this user
    /// may only read (its file or folder not writable: another user's, a read-only mount, a
    /// copy handed over for a look) is still served. A store that does not exist yet is created,
    /// as every command does.
    pub fn open_for_reading(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Store::open(path);
        }
        match Store::open(path) {
            Ok(store) => Ok(store),
            Err(writable) => match Store::open_read_only(path) {
                Ok(store) => {
                    tracing::debug!(store = %path.display(), error = %format!("{writable:#}"), "the store cannot be written: opened read-only");
                    Ok(store)
                }
                Err(read_only) => {
                    tracing::debug!(error = %format!("{read_only:#}"), "the store cannot be read read-only either");
                    Err(writable)
                }
            },
        }
    }

    /// Opens an existing store read-only: nothing is created, converted or migrated; a schema
    /// older or newer than this version's is an error that says what to do. SQLite reads a WAL
    /// store read-only through its `-shm` file; when that cannot be opened (a folder this user
    /// may not write, a `-shm` of the owner's), the file is read as it stands (`immutable`),
    /// which misses what is still in the `-wal` file: then a warning says so.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let cannot = || format!("cannot open the store `{}` read-only", path.display());
        let probe = |conn: &Connection| -> rusqlite::Result<i32> {
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        };
        let (conn, version) = match Connection::open_with_flags(path, flags)
            .and_then(|c| probe(&c).map(|v| (c, v)))
        {
            Ok(found) => found,
            Err(_) => {
                let conn =
                    Connection::open_with_flags(immutable_uri(path), flags).with_context(cannot)?;
                let version = probe(&conn).with_context(cannot)?;
                let wal = sidecar(path, "-wal");
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    tracing::warn!(
                        "the store `{}` is read as of its last checkpoint: its `{}` cannot be read by this user (run the command as the store's owner to see the latest writes)",
                        path.display(),
                        wal.display()
                    );
                }
                (conn, version)
            }
        };
        let pending = MIGRATIONS.pending_migrations(&conn).with_context(cannot)?;
        if version == 0 {
            anyhow::bail!(
                "`{}` is not a crm-jobs store (or an empty one), and this user cannot write it",
                path.display()
            );
        }
        if pending > 0 {
            anyhow::bail!(
                "the store `{}` has an older schema than this version of crm-jobs and this user cannot write it: run any job once as the store's owner to bring it up to date",
                path.display()
            );
        }
        if pending < 0 {
            anyhow::bail!(
                "the store `{}` was written by a newer version of crm-jobs: use that version",
                path.display()
            );
        }
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`): everything `f` writes is
    /// committed together when it returns `Ok`, and nothing of it when it fails or the process
    /// dies (SQLite rolls an unfinished transaction back). Imports write their rows this way:
    /// all of them or none, and fast (one commit for the file, not one per row).
    pub fn in_one_transaction<T>(&mut self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            // SQLite may end a transaction on its own after some errors (a full disk): then
            // nothing of it stands, and the caller is told so rather than told it committed.
            Ok(_) if !self.in_transaction() => Err(anyhow::anyhow!(
                "the store ended the transaction on its own (is the disk full?)"
            )),
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                self.conn.execute_batch("ROLLBACK").ok();
                Err(e)
            }
        }
    }

    /// Whether a transaction is open (inside [`Store::in_one_transaction`], unless SQLite
    /// ended it on its own).
    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// A write transaction of its own, or the caller's inside [`Store::in_one_transaction`].
    pub(crate) fn write_tx(&mut self) -> rusqlite::Result<WriteTx<'_>> {
        Ok(if self.conn.is_autocommit() {
            WriteTx::Own(self.conn.transaction()?)
        } else {
            WriteTx::Nested(&self.conn)
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

/// The URI that opens `path` as an immutable file (`file:...?immutable=1`), with the characters
/// a URI reserves escaped.
fn immutable_uri(path: &Path) -> String {
    use std::fmt::Write as _;
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' | 0x80.. => write!(uri, "%{b:02X}").unwrap_or(()),
            _ => uri.push(char::from(*b)),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// `store.db-wal` for `store.db` and `-wal`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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

    /// What a user who may only read is told of a store an upgrade has not migrated, of a
    /// newer one, and of a file that is not a store; a current store opens.
    #[test]
    fn a_store_opened_read_only_says_what_is_wrong_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, version: Option<usize>| {
            let path = dir.path().join(name);
            let mut conn = Connection::open(&path).unwrap();
            match version {
                Some(v) => MIGRATIONS.to_version(&mut conn, v).unwrap(),
                None => conn.execute_batch("CREATE TABLE t (x)").unwrap(),
            }
            path
        };
        let error = |path: &Path| format!("{:#}", Store::open_read_only(path).err().unwrap());
        // The schema version of a current store.
        let latest = {
            let mut conn = Connection::open_in_memory().unwrap();
            MIGRATIONS.to_latest(&mut conn).unwrap();
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let old = at("old.db", Some(7));
        assert!(
            error(&old).contains("has an older schema than this version of crm-jobs and this user cannot write it: run any job once as the store's owner"),
            "{}",
            error(&old)
        );
        let other = at("other.db", None);
        assert!(
            error(&other).contains("is not a crm-jobs store"),
            "{}",
            error(&other)
        );
        let newer = at("newer.db", Some(latest as usize));
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", latest + 1)
            .unwrap();
        assert!(
            error(&newer).contains("written by a newer version"),
            "{}",
            error(&newer)
        );
        let current = at("current.db", Some(latest as usize));
        let store = Store::open_read_only(&current).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
        // Read-only: a write is refused by SQLite itself.
        assert!(store.conn.execute_batch("CREATE TABLE t (x)").is_err());
    }

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    /// Issue 15: a new store's `-wal` and `-shm` were created 0644 under umask 022.
    #[test]
    fn a_new_store_and_its_wal_files_are_private_under_umask_022() {
        use std::os::unix::fs::PermissionsExt;
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let store = Store::open(&path).unwrap();
        store
            .conn
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        for file in [path.clone(), sidecar(&path, "-wal"), sidecar(&path, "-shm")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
        }
    }

    /// 0008 gives back to the lookup the invoices a PDF failure had made `partial` or
    /// `gave_up`, and moves that failure to the PDF's own columns.
    #[test]
    fn migration_0008_frees_invoices_held_by_their_pdf() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO contracts (id, contract_number, cpf, customer_name, installed_on, safra, created_at, updated_at)
             VALUES (1, 'C1', '70899057136', 'ANA', '2025-06-05', '2025-06', 'x', 'x');
             INSERT INTO invoices (contract_id, number, fetch_status, error_kind, failed_attempts, last_error, payment_status)
             VALUES (1, 1, 'gave_up', 'transient', 3, 'PDF not saved: the PDF of invoice `9` is not a PDF', 'open'),
                    (1, 2, 'partial', 'permanent', 1, 'barcode not recorded: bad check digit', 'open'),
                    (1, 3, 'gave_up', 'transient', 3, 'the Nio API answered 503 Service Unavailable', 'unknown');
             INSERT INTO invoices (contract_id, number, fetch_status, pdf_sha256, expected_amount_centavos)
             VALUES (1, 4, 'success', 'abc', 9990);",
        )
        .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT number, fetch_status, failed_attempts, last_error, pdf_status, pdf_error,
                        pdf_error_kind, pdf_failed_attempts, expected_amount_source
                 FROM invoices ORDER BY number",
            )
            .unwrap();
        type Row = (
            u32,
            String,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    "success".into(),
                    0,
                    None,
                    s("gave_up"),
                    s("the PDF of invoice `9` is not a PDF"),
                    s("transient"),
                    3,
                    None
                ),
                (
                    2,
                    "partial".into(),
                    1,
                    s("barcode not recorded: bad check digit"),
                    None,
                    None,
                    None,
                    0,
                    None
                ),
                (
                    3,
                    "gave_up".into(),
                    3,
                    s("the Nio API answered 503 Service Unavailable"),
                    None,
                    None,
                    None,
                    0,
                    None
                ),
                (
                    4,
                    "success".into(),
                    0,
                    None,
                    s("saved"),
                    None,
                    None,
                    0,
                    s("invoice")
                ),
            ]
        );
    }
}
