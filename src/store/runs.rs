//! SQL of the `runs` table: one row per start of a job.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::Store;

/// What is known when a run starts.
pub struct NewRun<'a> {
    pub job: &'a str,
    pub origin: &'a str,
    pub args: &'a str,
    pub safra: Option<&'a str>,
    pub pid: u32,
    pub started_at: &'a str,
}

/// What is written when a run ends.
pub struct FinishedRun<'a> {
    pub status: super::RunStatus,
    pub finished_at: &'a str,
    pub duration_ms: i64,
    pub items_total: i64,
    pub items_ok: i64,
    pub items_failed: i64,
    pub items_skipped: i64,
    pub counters: &'a str,
    pub item_ms: Option<(i64, i64, i64)>,
    pub error: Option<&'a str>,
    pub log: &'a str,
}

/// A run as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub origin: String,
    pub status: super::RunStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub items_total: i64,
    pub items_ok: i64,
    pub items_failed: i64,
    /// Items the run set out to take, when known (see sql/0007).
    pub items_planned: Option<i64>,
}

impl Store {
    /// Marks runs of `job` still `running` as `interrupted`; call only while holding the job's
    /// lock (so no live process owns them). Returns their ids.
    pub fn mark_interrupted(&mut self, job: &str, now: &str, by_run: i64) -> Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM runs WHERE job = ?1 AND status = 'running' AND id <> ?2",
            )?;
            stmt.query_map(params![job, by_run], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            let message = format!(
                "the process ended without finishing (killed, crashed or the machine stopped); found by run #{by_run}"
            );
            tx.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?2,
                        error = COALESCE(error, ?3),
                        duration_ms = CAST((julianday(?2) - julianday(started_at)) * 86400000 AS INTEGER)
                 WHERE id = ?1",
                params![id, now, message],
            )?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Records the start of a run and returns its id.
    pub fn insert_run(&mut self, run: &NewRun) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO runs (job, origin, args, safra, pid, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run.job, run.origin, run.args, run.safra, run.pid, run.started_at],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a run.
    pub fn finish_run(&mut self, id: i64, run: &FinishedRun) -> Result<()> {
        let (min, avg, max) = match run.item_ms {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        };
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished_at = ?3, duration_ms = ?4, items_total = ?5,
                    items_ok = ?6, items_failed = ?7, items_skipped = ?8, counters = ?9,
                    item_ms_min = ?10, item_ms_avg = ?11, item_ms_max = ?12, error = ?13, log = ?14
             WHERE id = ?1",
            params![
                id,
                run.status,
                run.finished_at,
                run.duration_ms,
                run.items_total,
                run.items_ok,
                run.items_failed,
                run.items_skipped,
                run.counters,
                min,
                avg,
                max,
                run.error,
                run.log
            ],
        )?;
        Ok(())
    }

    /// The latest run of `job`, if any.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, job, origin, status, started_at, finished_at, error, items_total, items_ok, items_failed, items_planned
                 FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1",
                [job],
                run_row,
            )
            .optional()?)
    }

    /// How far a running run got: its counts so far and the items it planned.
    pub fn run_progress(
        &mut self,
        id: i64,
        planned: Option<i64>,
        (total, ok, failed, skipped): (i64, i64, i64, i64),
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET items_planned = ?2, items_total = ?3, items_ok = ?4, items_failed = ?5,
                    items_skipped = ?6
             WHERE id = ?1 AND status = 'running'",
            rusqlite::params![id, planned, total, ok, failed, skipped],
        )?;
        Ok(())
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, job, origin, status, started_at, finished_at, error, items_total, items_ok, items_failed, items_planned
             FROM runs ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], run_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        origin: r.get(2)?,
        status: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        error: r.get(6)?,
        items_total: r.get(7)?,
        items_ok: r.get(8)?,
        items_failed: r.get(9)?,
        items_planned: r.get(10)?,
    })
}
