//! SQL of the CRM outbox: enqueueing, superseding (payloads merged), claiming, which claimed
//! items were sent, outcomes, failed items sent again and the items they block, the CRM ids
//! learned, the request log, the shared rate limit and its 429 pause, and the retention of old
//! rows.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::Store;

/// A change to enqueue.
pub struct NewItem {
    pub entity: String,
    pub record_id: String,
    pub action: String,
    pub payload: String,
    pub priority: Option<i64>,
}

/// A claimed item.
#[derive(Debug, Clone)]
pub struct QueueItem {
    pub id: i64,
    pub entity: String,
    pub record_id: String,
    pub action: String,
    pub payload: String,
    pub priority: i64,
    pub attempts: u32,
    pub idempotency_key: String,
    pub unknown_outcome: bool,
}

/// One exported queue row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueExport {
    pub id: i64,
    pub entity: String,
    pub record_id: String,
    pub action: super::QueueAction,
    pub status: super::QueueStatus,
    pub priority: Option<i64>,
    pub attempts: i64,
    pub external_id: Option<String>,
    pub unknown_outcome: bool,
    pub waiting_for: Option<String>,
    pub due_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// The failed item this one waits for (its `waiting_for` record's last change failed and
    /// nothing newer of that record is on its way).
    pub blocked_by_item: Option<i64>,
    /// That failed item's error.
    pub blocked_by_error: Option<String>,
}

/// A pending item that waits for a record whose last change failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Blocked {
    pub id: i64,
    pub entity: String,
    pub record_id: String,
    pub waiting_for: String,
    pub failed_item: i64,
    pub error: Option<String>,
}

/// What the recovery of a dead process's items found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Items whose request was in flight: now `pending` and `unknown_outcome`.
    pub unknown: Vec<i64>,
    /// Items only claimed, never sent: back to `pending`, untouched.
    pub untouched: usize,
}

/// What `sync-queue --retry-failed` did.
#[derive(Debug, Default)]
pub struct Retried {
    /// Failed items now pending again.
    pub requeued: Vec<i64>,
    /// Failed items left failed, each with the newer change of its record already done.
    pub stale: Vec<(i64, i64)>,
}

/// The shared pause of a rate limit: from when (the 429's arrival) until when, Unix ms.
#[derive(Debug, Clone, Copy)]
pub struct RatePause {
    pub from_ms: i64,
    pub until_ms: i64,
}

/// The failed item a pending item waits for (`q` the waiting item): its record's newest failed
/// change, when no change of that record is pending, processing or done after it.
const BLOCKED_BY: &str = "SELECT f.id FROM sync_queue f
     WHERE q.status = 'pending' AND q.waiting_for IS NOT NULL
       AND f.entity = substr(q.waiting_for, 1, instr(q.waiting_for, ':') - 1)
       AND f.record_id = substr(q.waiting_for, instr(q.waiting_for, ':') + 1)
       AND f.status = 'failed'
       AND NOT EXISTS (SELECT 1 FROM sync_queue o WHERE o.entity = f.entity AND o.record_id = f.record_id
                         AND o.id > f.id AND o.status IN ('pending', 'processing', 'done'))
     ORDER BY f.id DESC LIMIT 1";

/// A request as logged in `sync_log`.
pub struct RequestLog<'a> {
    pub run_id: i64,
    pub at: &'a str,
    pub request: &'a str,
    pub status: Option<u16>,
    pub duration_ms: i64,
    pub error: Option<&'a str>,
}

/// A pending item of a record, for superseding.
struct Pending {
    id: i64,
    action: String,
    payload: String,
    attempts: i64,
    unknown: bool,
}

/// Rows a cleanup rule removes: a table and the condition on the cutoff instant (`?1`). The
/// condition must be served by an index on the column it compares with the cutoff (see
/// `sql/0011_retention_indexes.sql`; a test checks the plan of every rule).
pub struct Retention {
    pub name: &'static str,
    pub table: &'static str,
    pub condition: &'static str,
}

impl Retention {
    /// The query of at most `?2` rows of the rule, cutoff `?1`: what a batch of `cleanup`
    /// removes. It must find them through an index (the tests check its plan).
    pub fn select_sql(&self) -> String {
        format!(
            "SELECT rowid FROM {} WHERE {} LIMIT ?2",
            self.table, self.condition
        )
    }
}

/// Every retention rule; each job's rows join this list.
pub const RETENTION: &[Retention] = &[
    Retention {
        name: "sync_log",
        table: "sync_log",
        condition: "at < ?1",
    },
    Retention {
        name: "queue_done",
        table: "sync_queue",
        condition: "status IN ('done', 'superseded') AND finished_at < ?1",
    },
    Retention {
        name: "queue_failed",
        table: "sync_queue",
        condition: "status = 'failed' AND finished_at < ?1",
    },
    Retention {
        name: "runs",
        table: "runs",
        condition: "status <> 'running' AND started_at < ?1",
    },
    Retention {
        name: "job_skips",
        table: "job_skips",
        condition: "at < ?1",
    },
    Retention {
        name: "email_outbox",
        table: "email_outbox",
        condition: "status IN ('sent', 'failed') AND created_at < ?1",
    },
];

impl Store {
    /// Inserts changes in one transaction. Returns the new ids.
    pub fn enqueue(&mut self, items: &[NewItem]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO sync_queue (entity, record_id, action, payload, priority) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for i in items {
                stmt.execute(params![
                    i.entity,
                    i.record_id,
                    i.action,
                    i.payload,
                    i.priority
                ])?;
            }
        }
        tx.commit()?;
        Ok(items.len())
    }

    /// Folds several pending, never-sent changes of one record into the newest: returns
    /// (superseded, cancelled). The payloads merge, the later's fields over the earlier's
    /// (objects key by key; after a delete, only the changes since it): no field is lost. A
    /// create is kept as a create; a create never sent followed by a delete cancels both.
    /// Changes that may have reached the CRM are never folded, nor a group with a payload that
    /// is not a JSON object (each goes out, and that one fails with its reason).
    pub fn supersede(&mut self, now: &str) -> Result<(usize, usize)> {
        let tx = self.conn.transaction()?;
        let groups: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT entity, record_id FROM sync_queue WHERE status = 'pending'
                 GROUP BY entity, record_id HAVING COUNT(*) > 1",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let (mut superseded, mut cancelled) = (0, 0);
        for (entity, record) in groups {
            let items: Vec<Pending> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, action, payload, attempts, unknown_outcome FROM sync_queue
                     WHERE status = 'pending' AND entity = ?1 AND record_id = ?2 ORDER BY id",
                )?;
                stmt.query_map(params![entity, record], |r| {
                    Ok(Pending {
                        id: r.get(0)?,
                        action: r.get(1)?,
                        payload: r.get(2)?,
                        attempts: r.get(3)?,
                        unknown: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            // Changes that may have reached the CRM (attempted, or in flight when a process
            // died) are resolved first, each with its own key; only the never-sent changes after
            // the last of them fold into the newest.
            let settled = items
                .iter()
                .rposition(|p| p.unknown || p.attempts > 0)
                .map_or(0, |k| k + 1);
            let items = &items[settled..];
            if items.len() < 2 {
                continue;
            }
            let newest = &items[items.len() - 1];
            // The payload sent: every change since the last delete, merged in order.
            let since_delete = items[..items.len() - 1]
                .iter()
                .rposition(|p| p.action == "delete")
                .map_or(0, |k| k + 1);
            let mut merged: Option<Value> = None;
            let mut foldable = true;
            if newest.action != "delete" {
                for p in &items[since_delete..] {
                    match serde_json::from_str::<Value>(&p.payload) {
                        Ok(v @ Value::Object(_)) => match merged.as_mut() {
                            Some(m) => merge(m, v),
                            None => merged = Some(v),
                        },
                        _ => foldable = false,
                    }
                }
            }
            if !foldable {
                continue;
            }
            let had_create = items[..items.len() - 1]
                .iter()
                .any(|p| p.action == "create");
            // A create never sent followed by a delete: the CRM never has to hear of it, unless
            // an earlier change of the record did reach it.
            let known_at_crm: bool = tx
                .query_row(
                    "SELECT 1 FROM external_ids WHERE entity = ?1 AND record_id = ?2",
                    params![entity, record],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            let action = match newest.action.as_str() {
                "delete" if had_create && settled == 0 && !known_at_crm => None,
                "update" | "upsert" if had_create => Some("create"),
                other => Some(other),
            };
            for p in &items[..items.len() - 1] {
                tx.execute(
                    "UPDATE sync_queue SET status = 'superseded', finished_at = ?2, updated_at = ?2,
                            last_error = 'superseded by item #' || ?3
                     WHERE id = ?1",
                    params![p.id, now, newest.id],
                )?;
                superseded += 1;
            }
            match action {
                Some(a) => {
                    let payload = merged.map_or_else(|| newest.payload.clone(), |m| m.to_string());
                    tx.execute(
                        "UPDATE sync_queue SET action = ?2, payload = ?3, updated_at = ?4 WHERE id = ?1",
                        params![newest.id, a, payload, now],
                    )?;
                }
                None => {
                    tx.execute(
                        "UPDATE sync_queue SET status = 'done', finished_at = ?2, updated_at = ?2,
                                last_error = 'created and deleted before any sync: nothing sent'
                         WHERE id = ?1",
                        params![newest.id, now],
                    )?;
                    cancelled += 1;
                }
            }
        }
        tx.commit()?;
        Ok((superseded, cancelled))
    }

    /// Writes the priorities by entity and gives them to pending items without their own.
    pub fn set_priorities(&mut self, priorities: &[(String, i64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM sync_priorities", [])?;
        for (e, p) in priorities {
            tx.execute(
                "INSERT INTO sync_priorities (entity, priority) VALUES (?1, ?2)",
                params![e, p],
            )?;
        }
        tx.execute(
            "UPDATE sync_queue SET priority = COALESCE(
                    (SELECT p.priority FROM sync_priorities p WHERE p.entity = sync_queue.entity), 0)
             WHERE status = 'pending' AND priority IS NULL",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Items left `processing` by a dead process. Those whose request had left (`sent_at`)
    /// have an unknown outcome: back to `pending`, marked, to be sent again with the same
    /// idempotency key. Those only claimed go back untouched.
    pub fn recover_in_flight(&mut self, now: &str) -> Result<Recovered> {
        let tx = self.conn.transaction()?;
        let unknown: Vec<i64> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM sync_queue WHERE status = 'processing' AND sent_at IS NOT NULL",
            )?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        tx.execute(
            "UPDATE sync_queue SET status = 'pending', unknown_outcome = 1, claimed_run = NULL, sent_at = NULL, updated_at = ?1,
                    last_error = 'unknown outcome: a request was in flight when run #' || COALESCE(claimed_run, '?') ||
                                 ' stopped; resent with the same idempotency key'
             WHERE status = 'processing' AND sent_at IS NOT NULL",
            [now],
        )?;
        let untouched = tx.execute(
            "UPDATE sync_queue SET status = 'pending', claimed_run = NULL, updated_at = ?1
             WHERE status = 'processing'",
            [now],
        )?;
        tx.commit()?;
        Ok(Recovered { unknown, untouched })
    }

    /// Gives pending rows named by a synonym (`cliente`) their entity's name (`clientes`), so
    /// that a record's changes fold and follow one another whatever name each row used.
    pub fn rename_pending_entities(&mut self, renames: &[(String, String)]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for (from, to) in renames {
            n += tx.execute(
                "UPDATE sync_queue SET entity = ?2 WHERE entity = ?1 AND status = 'pending'",
                params![from, to],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The entity names of the pending rows.
    pub fn pending_entities(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT entity FROM sync_queue WHERE status = 'pending'")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The status of each item named (`None`: no such item).
    pub fn item_statuses(&self, ids: &[i64]) -> Result<Vec<(i64, Option<super::QueueStatus>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status FROM sync_queue WHERE id = ?1")?;
        ids.iter()
            .map(|id| Ok((*id, stmt.query_row([id], |r| r.get(0)).optional()?)))
            .collect()
    }

    /// Makes failed items (all, or those of `ids`) pending again, due now, with no attempt
    /// counted, keeping their idempotency key and their `unknown_outcome`. An item whose
    /// record had a newer change done since is left failed: sending it would undo that change.
    pub fn retry_failed(&mut self, ids: Option<&[i64]>, now: &str) -> Result<Retried> {
        let tx = self.conn.transaction()?;
        let failed: Vec<(i64, Option<i64>)> = {
            let mut stmt = tx.prepare(
                "SELECT q.id, (SELECT MAX(n.id) FROM sync_queue n WHERE n.entity = q.entity
                                 AND n.record_id = q.record_id AND n.id > q.id AND n.status = 'done')
                 FROM sync_queue q WHERE q.status = 'failed' ORDER BY q.id",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Retried::default();
        for (id, newer) in failed {
            if ids.is_some_and(|ids| !ids.contains(&id)) {
                continue;
            }
            if let Some(newer) = newer {
                out.stale.push((id, newer));
                continue;
            }
            tx.execute(
                "UPDATE sync_queue SET status = 'pending', attempts = 0, due_at = NULL, finished_at = NULL,
                        claimed_run = NULL, sent_at = NULL, updated_at = ?2
                 WHERE id = ?1",
                params![id, now],
            )?;
            out.requeued.push(id);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Pending items that wait for a record whose last change failed (they would wait for
    /// ever), with that failure, oldest first.
    pub fn blocked_items(&self) -> Result<Vec<Blocked>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT q.id, q.entity, q.record_id, q.waiting_for, b.id, b.last_error
             FROM sync_queue q
             JOIN sync_queue b ON b.id = ({BLOCKED_BY})
             WHERE q.waiting_for IS NOT NULL AND q.status = 'pending' ORDER BY q.id"
        ))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Blocked {
                    id: r.get(0)?,
                    entity: r.get(1)?,
                    record_id: r.get(2)?,
                    waiting_for: r.get(3)?,
                    failed_item: r.get(4)?,
                    error: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Marks an item's request as leaving now: from here its outcome is unknown until its
    /// answer is recorded.
    pub fn mark_sent(&mut self, id: i64, at: &str) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE sync_queue SET sent_at = ?2 WHERE id = ?1")?
            .execute(params![id, at])?;
        Ok(())
    }

    /// Sets or clears an item's `unknown_outcome` (cleared once a lookup at the CRM settled
    /// it).
    pub fn set_unknown_outcome(&mut self, id: i64, unknown: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE sync_queue SET unknown_outcome = ?2 WHERE id = ?1",
            params![id, unknown],
        )?;
        Ok(())
    }

    /// Claims up to `limit` due items atomically (priority, then age). Items inserted since
    /// the run's [`Store::set_priorities`] without a priority wait for the next run.
    pub fn claim(&mut self, run_id: i64, now: &str, limit: u32) -> Result<Vec<QueueItem>> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE sync_queue SET status = 'processing', claimed_run = ?1, claimed_at = ?2, updated_at = ?2,
                    idempotency_key = COALESCE(idempotency_key, 'crm-jobs-' || id)
             WHERE id IN (
                SELECT q.id FROM sync_queue q INDEXED BY sync_queue_claim
                WHERE q.status = 'pending' AND q.priority IS NOT NULL AND (q.due_at IS NULL OR q.due_at <= ?2)
                  -- one change of a record at a time, oldest first: not while another is in
                  -- flight, and only the oldest pending one
                  AND NOT EXISTS (SELECT 1 FROM sync_queue f WHERE f.status = 'processing'
                                  AND f.entity = q.entity AND f.record_id = q.record_id)
                  AND q.id = (SELECT MIN(m.id) FROM sync_queue m WHERE m.status = 'pending'
                              AND m.entity = q.entity AND m.record_id = q.record_id)
                ORDER BY q.priority DESC, q.id
                LIMIT ?3)
             RETURNING id, entity, record_id, action, payload, priority,
                    attempts, idempotency_key, unknown_outcome",
        )?;
        let mut items: Vec<QueueItem> = stmt
            .query_map(params![run_id, now, limit], |r| {
                Ok(QueueItem {
                    id: r.get(0)?,
                    entity: r.get(1)?,
                    record_id: r.get(2)?,
                    action: r.get(3)?,
                    payload: r.get(4)?,
                    priority: r.get(5)?,
                    attempts: r.get(6)?,
                    idempotency_key: r.get(7)?,
                    unknown_outcome: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        items.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Ok(items)
    }

    /// Gives claimed items back, untouched (the run stopped before sending them).
    pub fn release(&mut self, ids: &[i64], now: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE sync_queue SET status = 'pending', claimed_run = NULL, sent_at = NULL, updated_at = ?2 WHERE id = ?1 AND status = 'processing'",
                params![id, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The CRM id of an ERP record, if learned.
    pub fn external_id(&self, entity: &str, record_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT external_id FROM external_ids WHERE entity = ?1 AND record_id = ?2",
            )?
            .query_row(params![entity, record_id], |r| r.get(0))
            .optional()?)
    }

    /// Learns a record's CRM id found at the CRM (a lookup by natural key), before the item is
    /// done: whatever happens next, the record is never created again.
    pub fn learn_external_id(
        &mut self,
        entity: &str,
        record_id: &str,
        external_id: &str,
        now: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO external_ids (entity, record_id, external_id, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (entity, record_id) DO UPDATE SET external_id = excluded.external_id, updated_at = excluded.updated_at",
            params![entity, record_id, external_id, now],
        )?;
        Ok(())
    }

    /// Defers an item until a referenced record has a CRM id (no attempt is counted).
    pub fn defer(&mut self, id: i64, waiting_for: &str, due_at: &str, now: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sync_queue SET status = 'pending', claimed_run = NULL, sent_at = NULL, waiting_for = ?2, due_at = ?3, updated_at = ?4,
                    last_error = 'waiting for ' || ?2 || ' to be synced first'
             WHERE id = ?1",
            params![id, waiting_for, due_at, now],
        )?;
        Ok(())
    }

    /// Records a success with its log line, learning (or forgetting, for a delete) the
    /// record's CRM id; items waiting for it become due. Returns how many woke.
    pub fn record_done(
        &mut self,
        item: &QueueItem,
        action: &str,
        external_id: Option<&str>,
        now: &str,
        log: &RequestLog,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE sync_queue SET status = 'done', external_id = COALESCE(?2, external_id), last_status = ?3,
                    last_error = NULL, waiting_for = NULL, finished_at = ?4, updated_at = ?4, claimed_run = NULL,
                    sent_at = NULL
             WHERE id = ?1",
            params![item.id, external_id, log.status, now],
        )?;
        let mut woken = 0;
        if action == "delete" {
            tx.execute(
                "DELETE FROM external_ids WHERE entity = ?1 AND record_id = ?2",
                params![item.entity, item.record_id],
            )?;
        } else if let Some(ext) = external_id {
            tx.execute(
                "INSERT INTO external_ids (entity, record_id, external_id, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (entity, record_id) DO UPDATE SET external_id = excluded.external_id, updated_at = excluded.updated_at",
                params![item.entity, item.record_id, ext, now],
            )?;
            // Items waiting for this record are due now.
            woken = tx.execute(
                "UPDATE sync_queue SET due_at = NULL, waiting_for = NULL WHERE waiting_for = ?1 AND status = 'pending'",
                [format!("{}:{}", item.entity, item.record_id)],
            )?;
        }
        tx.execute(
            "INSERT INTO sync_log (item_id, run_id, at, request, status, duration_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![item.id, log.run_id, log.at, log.request, log.status, log.duration_ms, log.error],
        )?;
        tx.commit()?;
        Ok(woken)
    }

    /// Records a permanent failure.
    pub fn record_failed(
        &mut self,
        id: i64,
        status: Option<u16>,
        error: &str,
        now: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE sync_queue SET status = 'failed', last_status = ?2, last_error = ?3, finished_at = ?4,
                    updated_at = ?4, claimed_run = NULL, sent_at = NULL
             WHERE id = ?1",
            params![id, status, error, now],
        )?;
        Ok(())
    }

    /// Records a transient failure: due again at `due_at`, or `failed` at the attempt limit;
    /// `unknown`: the request may have been applied (a create's outcome is then unknown).
    /// Returns whether it failed for good.
    #[allow(clippy::too_many_arguments, reason = "one argument per column written")]
    pub fn record_retry(
        &mut self,
        id: i64,
        status: Option<u16>,
        error: &str,
        due_at: &str,
        max_attempts: u32,
        unknown: bool,
        now: &str,
    ) -> Result<bool> {
        let failed: bool = self.conn.query_row(
            "UPDATE sync_queue SET attempts = attempts + 1, last_status = ?2, last_error = ?3, claimed_run = NULL,
                    updated_at = ?6, sent_at = NULL, unknown_outcome = unknown_outcome OR ?7,
                    status = CASE WHEN attempts + 1 >= ?5 THEN 'failed' ELSE 'pending' END,
                    finished_at = CASE WHEN attempts + 1 >= ?5 THEN ?6 ELSE NULL END,
                    due_at = CASE WHEN attempts + 1 >= ?5 THEN due_at ELSE ?4 END
             WHERE id = ?1 RETURNING status = 'failed'",
            params![id, status, error, due_at, max_attempts, now, unknown],
            |r| r.get(0),
        )?;
        Ok(failed)
    }

    /// Appends to the request log.
    #[allow(clippy::too_many_arguments, reason = "one argument per column written")]
    pub fn log_request(
        &mut self,
        item_id: i64,
        run_id: i64,
        at: &str,
        request: &str,
        status: Option<u16>,
        duration_ms: i64,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sync_log (item_id, run_id, at, request, status, duration_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![item_id, run_id, at, request, status, duration_ms, error])?;
        Ok(())
    }

    /// Takes one token of the shared bucket `name` (`per_minute` tokens a minute, no burst; 0:
    /// no limit), or says how long to wait before asking again (also while a 429's pause
    /// lasts). `now_ms` is the real clock.
    pub fn rate_acquire(&mut self, name: &str, per_minute: u32, now_ms: i64) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(f64, i64, i64)> = tx
            .query_row(
                "SELECT tokens, updated_ms, paused_until_ms FROM rate_limits WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (tokens, updated, paused) = row.unwrap_or((1.0, now_ms, 0));
        if per_minute == 0 {
            // No limit of our own; only a pause a 429 asked for.
            tx.commit()?;
            return Ok((paused - now_ms).max(0) as u64);
        }
        let per_ms = f64::from(per_minute) / 60_000.0;
        let tokens = (tokens + (now_ms - updated).max(0) as f64 * per_ms).min(1.0);
        let (left, wait) = if now_ms < paused {
            (tokens, (paused - now_ms) as u64)
        } else if tokens >= 1.0 - 1e-9 {
            (tokens - 1.0, 0)
        } else {
            (tokens, ((1.0 - tokens) / per_ms).ceil() as u64)
        };
        tx.execute(
            "INSERT INTO rate_limits (name, tokens, updated_ms, paused_until_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_ms = excluded.updated_ms",
            params![name, left, now_ms, paused],
        )?;
        tx.commit()?;
        Ok(wait)
    }

    /// Records a 429 answered at `arrived_ms` to a request sent at `sent_ms`, asking to wait
    /// `wait_ms` (already capped by the caller). A pause starts when its 429 arrives and ends at
    /// the later of the current pause's end and `arrived_ms + wait_ms`; the answer to a request
    /// sent before the current pause began (in flight when it began) changes nothing. Returns
    /// the pause now in force, and whether this 429 started or extended it (`false`: it was in
    /// flight).
    pub fn rate_pause(
        &mut self,
        name: &str,
        sent_ms: i64,
        arrived_ms: i64,
        wait_ms: i64,
    ) -> Result<(RatePause, bool)> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(i64, i64)> = tx
            .query_row(
                "SELECT paused_from_ms, paused_until_ms FROM rate_limits WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (from, until) = row.unwrap_or((0, 0));
        let counted = sent_ms >= from;
        let pause = if !counted {
            RatePause {
                from_ms: from,
                until_ms: until,
            }
        } else if arrived_ms >= until {
            RatePause {
                from_ms: arrived_ms,
                until_ms: arrived_ms + wait_ms,
            }
        } else {
            RatePause {
                from_ms: from,
                until_ms: until.max(arrived_ms + wait_ms),
            }
        };
        tx.execute(
            "INSERT INTO rate_limits (name, tokens, updated_ms, paused_until_ms, paused_from_ms) VALUES (?1, 0, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET paused_until_ms = excluded.paused_until_ms,
                    paused_from_ms = excluded.paused_from_ms",
            params![name, arrived_ms, pause.until_ms, pause.from_ms],
        )?;
        tx.commit()?;
        Ok((pause, counted))
    }

    /// The pause of the shared bucket `name`, if one was ever stored.
    pub fn rate_pause_of(&self, name: &str) -> Result<Option<RatePause>> {
        Ok(self
            .conn
            .query_row(
                "SELECT paused_from_ms, paused_until_ms FROM rate_limits WHERE name = ?1",
                [name],
                |r| {
                    Ok(RatePause {
                        from_ms: r.get(0)?,
                        until_ms: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Queue depth by status.
    pub fn queue_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM sync_queue GROUP BY status ORDER BY status")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Hands queue rows for export to `each`, oldest first, one at a time.
    pub fn export_queue(
        &self,
        status: Option<super::QueueStatus>,
        each: &mut dyn FnMut(QueueExport) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT q.id, q.entity, q.record_id, q.action, q.status, q.priority, q.attempts, q.external_id,
                    q.unknown_outcome, q.waiting_for, q.due_at, q.last_status, q.last_error, q.idempotency_key,
                    q.created_at, q.finished_at, b.id, b.last_error
             FROM sync_queue q LEFT JOIN sync_queue b ON b.id = ({BLOCKED_BY})
             WHERE (?1 IS NULL OR q.status = ?1) ORDER BY q.id"
        ))?;
        let mut rows = stmt.query([status])?;
        while let Some(r) = rows.next()? {
            each(QueueExport {
                id: r.get(0)?,
                entity: r.get(1)?,
                record_id: r.get(2)?,
                action: r.get(3)?,
                status: r.get(4)?,
                priority: r.get(5)?,
                attempts: r.get(6)?,
                external_id: r.get(7)?,
                unknown_outcome: r.get(8)?,
                waiting_for: r.get(9)?,
                due_at: r.get(10)?,
                last_status: r.get(11)?,
                last_error: r.get(12)?,
                idempotency_key: r.get(13)?,
                created_at: r.get(14)?,
                finished_at: r.get(15)?,
                blocked_by_item: r.get(16)?,
                blocked_by_error: r.get(17)?,
            })?;
        }
        Ok(())
    }

    /// How many rows a retention rule would remove.
    pub fn retention_count(&self, rule: &Retention, cutoff: &str) -> Result<i64> {
        Ok(self.conn.query_row(
            &format!(
                "SELECT COUNT(*) FROM {} WHERE {}",
                rule.table, rule.condition
            ),
            [cutoff],
            |r| r.get(0),
        )?)
    }

    /// Removes at most `batch` rows of a retention rule in one short transaction; returns how
    /// many. The rows are found through the index on the rule's cutoff column (migration 0011),
    /// so that a batch reads the rows it removes and not the rows kept around them, and go in
    /// rowid order within the batch.
    pub fn retention_delete(
        &mut self,
        rule: &Retention,
        cutoff: &str,
        batch: u32,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let n = tx
            .prepare_cached(&format!(
                "DELETE FROM {t} WHERE rowid IN ({select})",
                t = rule.table,
                select = rule.select_sql()
            ))?
            .execute(params![cutoff, batch])?;
        tx.commit()?;
        Ok(n)
    }

    /// Gives the free pages back to the file system (`auto_vacuum = INCREMENTAL`); a store made
    /// before it is converted once, by a VACUUM. Returns the bytes given back and whether the
    /// store was converted.
    pub fn give_back_free_pages(&mut self) -> Result<(i64, bool)> {
        let pragma = |conn: &rusqlite::Connection, p: &str| -> Result<i64> {
            Ok(conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))?)
        };
        let page_size = pragma(&self.conn, "page_size")?;
        let before = pragma(&self.conn, "page_count")?;
        let converted = pragma(&self.conn, "auto_vacuum")? != 2;
        if converted {
            self.conn
                .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
        } else {
            // Each step of the pragma frees one page: step it to the end.
            let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        let after = pragma(&self.conn, "page_count")?;
        Ok(((before - after).max(0) * page_size, converted))
    }

    /// Moves the WAL back into the database file and truncates it.
    pub fn checkpoint(&mut self) -> Result<(i64, i64, i64)> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?)
    }
}

/// Folds a later change of a record over an earlier one: the later's fields win, objects merge
/// key by key (at every depth), anything else (a list, a text, `null`) is replaced whole.
pub fn merge(earlier: &mut Value, later: Value) {
    match (earlier, later) {
        (Value::Object(e), Value::Object(l)) => {
            for (k, v) in l {
                match e.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        e.insert(k, v);
                    }
                }
            }
        }
        (slot, later) => *slot = later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_later_change_folds_over_an_earlier_one_field_by_field() {
        let mut create = json!({"nome": "Maria", "email": "m@x.com", "enderecos": [{"endereco": {"cidade": "Goiânia"}}], "extra": {"a": "1", "b": "2"}});
        merge(
            &mut create,
            json!({"telefone": "62 9999", "nome": "Maria S", "extra": {"b": "3", "c": null}}),
        );
        assert_eq!(
            create,
            json!({"nome": "Maria S", "email": "m@x.com", "telefone": "62 9999", "enderecos": [{"endereco": {"cidade": "Goiânia"}}], "extra": {"a": "1", "b": "3", "c": null}})
        );
        // A list is replaced whole, a null wins.
        let mut venda = json!({"produtos": [{"produto": {"id": "1"}}], "obs": "x"});
        merge(
            &mut venda,
            json!({"produtos": [{"produto": {"id": "2"}}], "obs": null}),
        );
        assert_eq!(
            venda,
            json!({"produtos": [{"produto": {"id": "2"}}], "obs": null})
        );
    }

    #[test]
    fn a_429_in_flight_when_a_pause_began_does_not_extend_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("store.db")).unwrap();
        let pause = |p: RatePause| (p.from_ms, p.until_ms);
        // Sent at 1.0 s, answered 429 at 2.0 s, 42 s asked: the pause starts at its arrival.
        let (p, counted) = store.rate_pause("crm", 1_000, 2_000, 42_000).unwrap();
        assert!(counted);
        assert_eq!(pause(p), (2_000, 44_000));
        // Sent at 1.5 s (in flight when the pause began), answered later: nothing changes.
        let (p, counted) = store.rate_pause("crm", 1_500, 2_600, 42_000).unwrap();
        assert!(!counted);
        assert_eq!(pause(p), (2_000, 44_000));
        // Sent during the pause (a process that had not seen it yet): the later end wins.
        let (p, counted) = store.rate_pause("crm", 3_000, 3_100, 42_000).unwrap();
        assert!(counted);
        assert_eq!(pause(p), (2_000, 45_100));
        // After the pause, a new one from its own arrival.
        let (p, counted) = store.rate_pause("crm", 50_000, 50_100, 1_000).unwrap();
        assert!(counted);
        assert_eq!(pause(p), (50_100, 51_100));
        // Every process waits it out, with or without a limit of its own.
        assert_eq!(store.rate_acquire("crm", 0, 50_600).unwrap(), 500);
        assert_eq!(store.rate_acquire("crm", 100, 50_600).unwrap(), 500);
        assert_eq!(store.rate_acquire("crm", 100, 51_100).unwrap(), 0);
    }
}
