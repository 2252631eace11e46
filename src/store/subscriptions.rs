//! SQL of subscriptions, their users, plans, sessions and payments, the audit log, and the
//! email outbox. A state change, its audit rows and its email go in one transaction.

use anyhow::{Context, Result};
use rusqlite::{OptionalExtension, params};

use super::Store;

/// A subscription with what its emails need.
#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: i64,
    pub external_id: String,
    pub user_id: i64,
    pub user_name: String,
    pub email: String,
    pub plan_id: i64,
    pub plan_name: String,
    pub price_centavos: i64,
    pub status: String,
    pub current_period_start: String,
    pub current_period_end: String,
    pub gateway_subscription_id: Option<String>,
}

/// An audit row.
pub struct Audit<'a> {
    pub entity: &'a str,
    pub entity_id: i64,
    pub action: &'a str,
    pub before: String,
    pub after: String,
    pub reason: &'a str,
}

/// An email to queue.
pub struct NewEmail<'a> {
    pub dedupe_key: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub subscription_id: Option<i64>,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
}

/// What one step changes on one subscription, written in one transaction.
pub struct Change<'a> {
    pub subscription_id: i64,
    pub status: Option<&'a str>,
    pub period: Option<(&'a str, &'a str)>,
    pub warned_period_end: Option<&'a str>,
    /// Take this plan away from this user (user, plan).
    pub remove_plan_of: Option<(i64, i64)>,
    pub audits: Vec<Audit<'a>>,
    pub email: Option<NewEmail<'a>>,
}

/// A queued email.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    pub id: i64,
    pub message_id: String,
    pub kind: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attempts: i64,
}

/// The sessions `cleanup` soft-deletes, a batch at a time (cutoff `?1`, batch `?2`), through
/// the index `sessions_to_expire` (migration 0011; the tests check the plan).
pub const SESSIONS_TO_SOFT_DELETE: &str =
    "SELECT id, expires_at FROM sessions WHERE deleted_at IS NULL AND expires_at < ?1 LIMIT ?2";

/// The payments `cleanup` cancels, a batch at a time, through the index `payments_pending`.
pub const PAYMENTS_TO_CANCEL: &str = "SELECT id FROM payments WHERE status = 'pending' AND deleted_at IS NULL AND created_at < ?1 LIMIT ?2";

const SUBSCRIPTION_COLUMNS: &str =
    "s.id, s.external_id, u.id, u.name, u.email, p.id, p.name, p.price_centavos,
    s.status, s.current_period_start, s.current_period_end, s.gateway_subscription_id";

fn subscription_row(r: &rusqlite::Row) -> rusqlite::Result<SubscriptionRow> {
    Ok(SubscriptionRow {
        id: r.get(0)?,
        external_id: r.get(1)?,
        user_id: r.get(2)?,
        user_name: r.get(3)?,
        email: r.get(4)?,
        plan_id: r.get(5)?,
        plan_name: r.get(6)?,
        price_centavos: r.get(7)?,
        status: r.get(8)?,
        current_period_start: r.get(9)?,
        current_period_end: r.get(10)?,
        gateway_subscription_id: r.get(11)?,
    })
}

impl Store {
    fn subscriptions_where(
        &self,
        condition: &str,
        a: &str,
        b: &str,
    ) -> Result<Vec<SubscriptionRow>> {
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN users u ON u.id = s.user_id
             JOIN plans p ON p.id = s.plan_id WHERE s.deleted_at IS NULL AND u.deleted_at IS NULL AND {condition}
             ORDER BY s.current_period_end, s.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params![a, b], subscription_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Active subscriptions whose period ends in `(now, until]` and whose warning for that
    /// period is not queued yet.
    pub fn expiring(&self, now: &str, until: &str) -> Result<Vec<SubscriptionRow>> {
        self.subscriptions_where(
            "s.status = 'active' AND s.current_period_end > ?1 AND s.current_period_end <= ?2
             AND (s.warned_period_end IS NULL OR s.warned_period_end <> s.current_period_end)",
            now,
            until,
        )
    }

    /// Active subscriptions whose period ended at or before `now`, not set to cancel at
    /// period end; Stripe ones only once their period ended before `stripe_cutoff` (Stripe may
    /// still renew them).
    pub fn expired(&self, now: &str, stripe_cutoff: &str) -> Result<Vec<SubscriptionRow>> {
        self.subscriptions_where(
            "s.status = 'active' AND s.current_period_end <= ?1 AND s.cancel_at_period_end = 0
             AND (s.gateway <> 'stripe' OR s.current_period_end < ?2)",
            now,
            stripe_cutoff,
        )
    }

    /// Active Stripe subscriptions whose period ends within `[from, to)` (the grace days before
    /// today, and today, in São Paulo).
    pub fn stripe_due(&self, from: &str, to: &str) -> Result<Vec<SubscriptionRow>> {
        self.subscriptions_where(
            "s.status = 'active' AND s.gateway = 'stripe' AND s.gateway_subscription_id IS NOT NULL
             AND s.current_period_end >= ?1 AND s.current_period_end < ?2",
            from,
            to,
        )
    }

    /// Writes a change, its audit rows and its email in one transaction. Returns false when the
    /// email was already queued (same dedupe key): nothing is changed then.
    pub fn apply_change(&mut self, c: &Change, run_id: i64, now: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        if let Some(e) = &c.email {
            let inserted = tx.execute(
                "INSERT INTO email_outbox (dedupe_key, message_id, kind, subscription_id, to_address, subject,
                        text_body, html_body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (dedupe_key) DO NOTHING",
                params![e.dedupe_key, e.message_id, e.kind, e.subscription_id, e.to, e.subject, e.text, e.html, now],
            )?;
            if inserted == 0 {
                return Ok(false);
            }
        }
        tx.execute(
            "UPDATE subscriptions SET status = COALESCE(?2, status),
                    current_period_start = COALESCE(?3, current_period_start),
                    current_period_end = COALESCE(?4, current_period_end),
                    warned_period_end = COALESCE(?5, warned_period_end), updated_at = ?6
             WHERE id = ?1",
            params![
                c.subscription_id,
                c.status,
                c.period.map(|p| p.0),
                c.period.map(|p| p.1),
                c.warned_period_end,
                now
            ],
        )?;
        if let Some((user, plan)) = c.remove_plan_of {
            // Only the plan this subscription gave: a user on another plan keeps it.
            tx.execute(
                "UPDATE users SET plan_id = NULL WHERE id = ?1 AND plan_id = ?2",
                [user, plan],
            )?;
        }
        for a in &c.audits {
            tx.execute(
                "INSERT INTO audit_log (at, run_id, entity, entity_id, action, before, after, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![now, run_id, a.entity, a.entity_id, a.action, a.before, a.after, a.reason],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Writes one audit row on its own (a decision that changed nothing, e.g. Stripe says
    /// `past_due`).
    pub fn audit(&mut self, a: &Audit, run_id: i64, now: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO audit_log (at, run_id, entity, entity_id, action, before, after, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now,
                run_id,
                a.entity,
                a.entity_id,
                a.action,
                a.before,
                a.after,
                a.reason
            ],
        )?;
        Ok(())
    }

    /// Emails left `sending` by a dead process: their outcome is unknown; never resent by
    /// themselves. Returns their ids.
    pub fn recover_sending(&mut self, now: &str) -> Result<Vec<i64>> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM email_outbox WHERE status = 'sending'")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        self.conn.execute(
            "UPDATE email_outbox SET status = 'unknown', last_error = 'the process stopped while handing this message to the SMTP server: it may have been delivered; not resent (see `renew --resend`)',
                    sent_at = NULL WHERE status = 'sending'",
            [],
        )?;
        let _ = now;
        Ok(ids)
    }

    /// Pending emails, oldest first.
    pub fn pending_emails(&self, limit: u32) -> Result<Vec<OutboxEmail>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, message_id, kind, to_address, subject, text_body, html_body, attempts
             FROM email_outbox WHERE status = 'pending' ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(OutboxEmail {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    kind: r.get(2)?,
                    to: r.get(3)?,
                    subject: r.get(4)?,
                    text: r.get(5)?,
                    html: r.get(6)?,
                    attempts: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Sets an email's status (and error); `sent` also records when.
    pub fn set_email_status(
        &mut self,
        id: i64,
        status: super::EmailStatus,
        error: Option<&str>,
        now: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE email_outbox SET status = ?2, last_error = ?3,
                    attempts = attempts + CASE WHEN ?2 = 'sending' THEN 1 ELSE 0 END,
                    sent_at = CASE WHEN ?2 = 'sent' THEN ?4 ELSE sent_at END
             WHERE id = ?1",
            params![id, status, error, now],
        )?;
        Ok(())
    }

    /// Puts `unknown` (or `failed`) emails back to `pending`, by id or all: an operator's
    /// decision after checking the mailbox.
    pub fn resend_emails(&mut self, id: Option<i64>) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE email_outbox SET status = 'pending', last_error = NULL
             WHERE status IN ('unknown', 'failed') AND (?1 IS NULL OR id = ?1)",
            [id],
        )?)
    }

    /// Outbox depth by status.
    pub fn email_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM email_outbox GROUP BY status ORDER BY status")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Soft-deletes sessions expired before `cutoff`, each with an audit row. Returns how many.
    /// A batch at a time, through an index (migration 0011).
    pub fn soft_delete_sessions(
        &mut self,
        cutoff: &str,
        run_id: i64,
        now: &str,
        batch: u32,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let ids: Vec<(i64, String)> = {
            let mut stmt = tx.prepare(SESSIONS_TO_SOFT_DELETE)?;
            stmt.query_map(params![cutoff, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        for (id, expires) in &ids {
            tx.prepare_cached("UPDATE sessions SET deleted_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])?;
            tx.prepare_cached(
                "INSERT INTO audit_log (at, run_id, entity, entity_id, action, before, after, reason)
                 VALUES (?1, ?2, 'session', ?3, 'soft_deleted', '{\"deleted_at\":null}', json_object('deleted_at', ?1), 'expired ' || ?4 || ', more than the retention ago')",
            )?
            .execute(params![now, run_id, id, expires])?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// Cancels payments pending since before `cutoff`, each with an audit row.
    pub fn cancel_stale_payments(
        &mut self,
        cutoff: &str,
        run_id: i64,
        now: &str,
        batch: u32,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare(PAYMENTS_TO_CANCEL)?;
            stmt.query_map(params![cutoff, batch], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            tx.prepare_cached(
                "UPDATE payments SET status = 'cancelled', updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            tx.prepare_cached(
                "INSERT INTO audit_log (at, run_id, entity, entity_id, action, before, after, reason)
                 VALUES (?1, ?2, 'payment', ?3, 'cancelled', '{\"status\":\"pending\"}', '{\"status\":\"cancelled\"}', 'pending for longer than the retention')",
            )?
            .execute(params![now, run_id, id])?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// The id of a row by its host id (`table` is one of this module's tables).
    fn id_of(&self, table: &str, external_id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT id FROM {table} WHERE external_id = ?1"),
                [external_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Upserts a plan by its host id. `deleted` (on every upsert): when the host soft-deleted
    /// the record; the first one stays, and an import without it never brings it back.
    pub fn upsert_plan(
        &mut self,
        ext: &str,
        name: &str,
        price: i64,
        cycle: &str,
        deleted: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO plans (external_id, name, price_centavos, billing_cycle, deleted_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, price_centavos = excluded.price_centavos,
                    billing_cycle = excluded.billing_cycle, deleted_at = COALESCE(deleted_at, excluded.deleted_at)",
            params![ext, name, price, cycle, deleted],
        )?;
        Ok(())
    }

    /// Upserts a user by its host id; `plan` is the plan's host id.
    pub fn upsert_user(
        &mut self,
        ext: &str,
        name: &str,
        email: &str,
        plan: Option<&str>,
        deleted: Option<&str>,
    ) -> Result<()> {
        let plan_id = match plan {
            Some(p) => Some(
                self.id_of("plans", p)?
                    .with_context(|| format!("unknown plan `{p}`"))?,
            ),
            None => None,
        };
        self.conn.execute(
            "INSERT INTO users (external_id, name, email, plan_id, deleted_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, email = excluded.email, plan_id = excluded.plan_id,
                    deleted_at = COALESCE(deleted_at, excluded.deleted_at)",
            params![ext, name, email, plan_id, deleted],
        )?;
        Ok(())
    }

    /// Upserts a subscription by its host id. `warned`: the host sent the expiry warning of
    /// this period already (`warned_period_end` becomes its end; otherwise it is kept).
    #[allow(clippy::too_many_arguments, reason = "one argument per column written")]
    pub fn upsert_subscription(
        &mut self,
        ext: &str,
        user: &str,
        plan: &str,
        status: &str,
        period: (&str, &str),
        cancel_at_period_end: bool,
        gateway: &str,
        gateway_id: Option<&str>,
        warned: bool,
        deleted: Option<&str>,
    ) -> Result<()> {
        let user_id = self
            .id_of("users", user)?
            .with_context(|| format!("unknown user `{user}`"))?;
        let plan_id = self
            .id_of("plans", plan)?
            .with_context(|| format!("unknown plan `{plan}`"))?;
        self.conn.execute(
            "INSERT INTO subscriptions (external_id, user_id, plan_id, status, current_period_start, current_period_end,
                    cancel_at_period_end, gateway, gateway_subscription_id, warned_period_end, deleted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, CASE WHEN ?10 THEN ?6 END, ?11)
             ON CONFLICT (external_id) DO UPDATE SET user_id = excluded.user_id, plan_id = excluded.plan_id,
                    status = excluded.status, current_period_start = excluded.current_period_start,
                    current_period_end = excluded.current_period_end, cancel_at_period_end = excluded.cancel_at_period_end,
                    gateway = excluded.gateway, gateway_subscription_id = excluded.gateway_subscription_id,
                    warned_period_end = COALESCE(excluded.warned_period_end, warned_period_end),
                    deleted_at = COALESCE(deleted_at, excluded.deleted_at)",
            params![ext, user_id, plan_id, status, period.0, period.1, cancel_at_period_end, gateway, gateway_id, warned, deleted],
        )?;
        Ok(())
    }

    /// Upserts a session by its host id.
    pub fn upsert_session(
        &mut self,
        ext: &str,
        user: &str,
        expires_at: &str,
        deleted: Option<&str>,
    ) -> Result<()> {
        let user_id = self
            .id_of("users", user)?
            .with_context(|| format!("unknown user `{user}`"))?;
        self.conn.execute(
            "INSERT INTO sessions (external_id, user_id, expires_at, deleted_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (external_id) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at,
                    deleted_at = COALESCE(deleted_at, excluded.deleted_at)",
            params![ext, user_id, expires_at, deleted],
        )?;
        Ok(())
    }

    /// Upserts a payment by its host id.
    #[allow(clippy::too_many_arguments, reason = "one argument per column written")]
    pub fn upsert_payment(
        &mut self,
        ext: &str,
        user: &str,
        subscription: Option<&str>,
        amount: i64,
        status: &str,
        created_at: &str,
        deleted: Option<&str>,
    ) -> Result<()> {
        let user_id = self
            .id_of("users", user)?
            .with_context(|| format!("unknown user `{user}`"))?;
        let sub_id = match subscription {
            Some(s) => Some(
                self.id_of("subscriptions", s)?
                    .with_context(|| format!("unknown subscription `{s}`"))?,
            ),
            None => None,
        };
        self.conn.execute(
            "INSERT INTO payments (external_id, user_id, subscription_id, amount_centavos, status, created_at, deleted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (external_id) DO UPDATE SET user_id = excluded.user_id, subscription_id = excluded.subscription_id,
                    amount_centavos = excluded.amount_centavos, status = excluded.status, created_at = excluded.created_at,
                    deleted_at = COALESCE(deleted_at, excluded.deleted_at)",
            params![ext, user_id, sub_id, amount, status, created_at, deleted],
        )?;
        Ok(())
    }
}
