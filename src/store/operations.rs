//! SQL of pauses and skips, and the read-only views `status` and the metrics need.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::Store;

/// A pause.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pause {
    pub reason: Option<String>,
    pub paused_at: String,
}

/// What `status` shows of a job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobState {
    pub job: String,
    pub last_run: Option<super::RunRow>,
    pub last_duration_ms: Option<i64>,
    pub last_success_at: Option<String>,
    pub running: Option<i64>,
    pub consecutive_failures: i64,
    pub paused: Option<Pause>,
}

impl Store {
    /// Pauses a job (replacing an earlier pause).
    pub fn pause(&mut self, job: &str, reason: Option<&str>, now: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO job_pauses (job, reason, paused_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (job) DO UPDATE SET reason = excluded.reason, paused_at = excluded.paused_at",
            params![job, reason, now],
        )?;
        Ok(())
    }

    /// Resumes a job; false when it was not paused.
    pub fn resume(&mut self, job: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM job_pauses WHERE job = ?1", [job])?
            > 0)
    }

    /// The pause of a job, if paused.
    pub fn pause_of(&self, job: &str) -> Result<Option<Pause>> {
        Ok(self
            .conn
            .query_row(
                "SELECT reason, paused_at FROM job_pauses WHERE job = ?1",
                [job],
                |r| {
                    Ok(Pause {
                        reason: r.get(0)?,
                        paused_at: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records that a start of a paused job was skipped.
    pub fn record_skip(&mut self, job: &str, reason: Option<&str>, now: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO job_skips (job, at, reason) VALUES (?1, ?2, ?3)",
            params![job, now, reason],
        )?;
        Ok(())
    }

    /// The state of a job for `status` and the metrics.
    pub fn job_state(&self, job: &str) -> Result<JobState> {
        let last_run = self.last_run(job)?;
        let last_duration_ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT duration_ms FROM runs WHERE job = ?1 AND status <> 'running' ORDER BY id DESC LIMIT 1",
                [job],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let last_success_at: Option<String> = self
            .conn
            .query_row(
                "SELECT finished_at FROM runs WHERE job = ?1 AND status = 'success' ORDER BY id DESC LIMIT 1",
                [job],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let running: Option<i64> = self
            .conn
            .query_row("SELECT id FROM runs WHERE job = ?1 AND status = 'running' ORDER BY id DESC LIMIT 1", [job], |r| r.get(0))
            .optional()?;
        let statuses: Vec<super::RunStatus> = {
            let mut stmt = self.conn.prepare(
                "SELECT status FROM runs WHERE job = ?1 AND status <> 'running' ORDER BY id DESC LIMIT 100",
            )?;
            stmt.query_map([job], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let consecutive_failures = statuses
            .iter()
            .take_while(|s| **s == super::RunStatus::Failed)
            .count() as i64;
        Ok(JobState {
            job: job.to_string(),
            last_run,
            last_duration_ms,
            last_success_at,
            running,
            consecutive_failures,
            paused: self.pause_of(job)?,
        })
    }

    /// Oldest pending queue item's creation instant.
    pub fn oldest_pending_item(&self) -> Result<Option<String>> {
        Ok(self.conn.query_row(
            "SELECT MIN(created_at) FROM sync_queue WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Per sales point, clients (not cancelled) without a saved boleto for the month.
    pub fn boletos_missing(&self, year: i32, month: u32) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.code, COUNT(*) FROM clients c JOIN sales_points s ON s.id = c.sales_point_id
             WHERE COALESCE(c.situacao, '') <> 'cancelado'
               AND NOT EXISTS (SELECT 1 FROM boletos b WHERE b.client_id = c.id AND b.year = ?1 AND b.month = ?2
                                 AND b.outcome = 'success')
             GROUP BY s.code ORDER BY s.code",
        )?;
        let rows = stmt
            .query_map(params![year, month], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Work waiting in the store for `job` before a run (`None`: the job has no such measure):
    /// contracts with invoices to fetch, invoices to retry, boletos missing this month at sales
    /// points with credentials, queue items due.
    pub fn work_due(&self, job: &str, now: &str, today: chrono::NaiveDate) -> Result<Option<i64>> {
        use chrono::Datelike;
        let day = today.format("%Y-%m-%d").to_string();
        let n: i64 = match job {
            "fetch-invoices" => self.conn.query_row(
                "SELECT COUNT(*) FROM contracts c WHERE EXISTS (SELECT 1 FROM invoices i
                   WHERE i.contract_id = c.id AND i.payment_status <> 'paid' AND i.fetch_status <> 'gave_up'
                     AND (i.available_from IS NULL OR i.available_from <= ?1))",
                [&day],
                |r| r.get(0),
            )?,
            "retry" => self.conn.query_row(
                "SELECT COUNT(*) FROM invoices WHERE (fetch_status IN ('error', 'partial') AND error_kind = 'transient')
                   OR (pdf_status = 'error' AND pdf_error_kind = 'transient')",
                [],
                |r| r.get(0),
            )?,
            "download-boletos" => self.conn.query_row(
                "SELECT COUNT(*) FROM clients c JOIN sales_points s ON s.id = c.sales_point_id
                 WHERE s.password_token IS NOT NULL AND COALESCE(c.situacao, '') <> 'cancelado'
                   AND NOT EXISTS (SELECT 1 FROM boletos b WHERE b.client_id = c.id AND b.year = ?1
                                     AND b.month = ?2 AND b.outcome = 'success')",
                params![today.year(), today.month()],
                |r| r.get(0),
            )?,
            "sync-queue" => self.conn.query_row(
                "SELECT COUNT(*) FROM sync_queue WHERE status = 'pending' AND (due_at IS NULL OR due_at <= ?1)",
                [now],
                |r| r.get(0),
            )?,
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// When the job first ran, and when any job first ran (for jobs that never succeeded).
    pub fn first_runs(&self, job: &str) -> Result<(Option<String>, Option<String>)> {
        Ok(self.conn.query_row(
            "SELECT (SELECT MIN(started_at) FROM runs WHERE job = ?1), (SELECT MIN(started_at) FROM runs)",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The last run's item counts of a job (ok, failed, skipped).
    pub fn last_run_items(&self, job: &str) -> Result<Option<(i64, i64, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT items_ok, items_failed, items_skipped FROM runs WHERE job = ?1 AND status <> 'running'
                 ORDER BY id DESC LIMIT 1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }
}

impl Store {
    /// The open incident of a job and kind: (id, opened_at).
    pub fn open_incident(&self, job: &str, kind: &str) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, opened_at FROM incidents WHERE job = ?1 AND kind = ?2 AND cleared_at IS NULL",
                params![job, kind],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Opens an incident and queues its email, in one transaction.
    pub fn open_incident_with_email(
        &mut self,
        job: &str,
        kind: &str,
        detail: &str,
        now: &str,
        email: &super::NewEmail,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO incidents (job, kind, detail, opened_at) VALUES (?1, ?2, ?3, ?4)",
            params![job, kind, detail, now],
        )?;
        insert_email(&tx, email, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Clears an incident and queues its email, in one transaction.
    pub fn clear_incident_with_email(
        &mut self,
        id: i64,
        now: &str,
        email: &super::NewEmail,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE incidents SET cleared_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        insert_email(&tx, email, now)?;
        tx.commit()?;
        Ok(())
    }
}

fn insert_email(tx: &rusqlite::Transaction, e: &super::NewEmail, now: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO email_outbox (dedupe_key, message_id, kind, subscription_id, to_address, subject,
                text_body, html_body, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (dedupe_key) DO NOTHING",
        params![e.dedupe_key, e.message_id, e.kind, e.subscription_id, e.to, e.subject, e.text, e.html, now],
    )?;
    Ok(())
}
