//! Read-only SQL of `crm-jobs report`.

use anyhow::Result;
use rusqlite::params;

use super::Store;

/// Rows of (a, b, n) for the charts.
pub type Triples = Vec<(String, String, i64)>;

/// An invoice failing again and again: (contract, number, status, failed attempts, last error).
pub type PersistentError = (String, i64, String, i64, String);

impl Store {
    fn triples(&self, sql: &str, since: &str) -> Result<Triples> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt
            .query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// (job, day, runs) and (job, day, successful runs) since an instant; days in São Paulo.
    pub fn runs_per_day(&self, since: &str) -> Result<(Triples, Triples)> {
        let all = self.triples(
            "SELECT job, substr(started_at, 1, 13), COUNT(*) FROM runs WHERE started_at >= ?1 GROUP BY 1, 2",
            since,
        )?;
        let ok = self.triples(
            "SELECT job, substr(started_at, 1, 13), COUNT(*) FROM runs WHERE started_at >= ?1 AND status = 'success' GROUP BY 1, 2",
            since,
        )?;
        Ok((by_local_day(all, false), by_local_day(ok, false)))
    }

    /// (job, run id, duration in ms) of finished runs since an instant.
    pub fn run_durations(&self, since: &str) -> Result<Triples> {
        self.triples(
            "SELECT job, '#' || id, duration_ms FROM runs WHERE started_at >= ?1 AND duration_ms IS NOT NULL ORDER BY id",
            since,
        )
    }

    /// (safra, match outcome, invoices).
    pub fn outcomes_per_safra(&self) -> Result<Triples> {
        self.triples(
            "SELECT c.safra, COALESCE(i.match_outcome, 'not looked up'), COUNT(*) FROM invoices i
             JOIN contracts c ON c.id = i.contract_id WHERE ?1 = ?1 GROUP BY 1, 2 ORDER BY 1, 2",
            "",
        )
    }

    /// Safra against safra: (invoice number, safra, % of those invoices paid), so that cohorts
    /// are compared at the same installment.
    pub fn paid_share_per_safra(&self) -> Result<Triples> {
        self.triples(
            "SELECT printf('invoice %02d', i.number), c.safra,
                    CAST(ROUND(100.0 * SUM(i.payment_status = 'paid') / COUNT(*)) AS INTEGER)
             FROM invoices i JOIN contracts c ON c.id = i.contract_id
             WHERE ?1 = ?1 AND i.payment_status <> 'unknown' GROUP BY 1, 2 ORDER BY 1, 2",
            "",
        )
    }

    /// (consultant, outcome, clients-months).
    pub fn boletos_per_consultant(&self) -> Result<Triples> {
        self.triples(
            "SELECT k.name, b.outcome, COUNT(*) FROM boletos b JOIN clients c ON c.id = b.client_id
             JOIN consultants k ON k.id = c.consultant_id WHERE ?1 = ?1 GROUP BY 1, 2 ORDER BY 1, 2",
            "",
        )
    }

    /// (day, request outcome class, requests) of the CRM request log since an instant; days in
    /// São Paulo.
    pub fn queue_throughput(&self, since: &str) -> Result<Triples> {
        let hours = self.triples(
            "SELECT CASE WHEN status BETWEEN 200 AND 299 THEN 'done' WHEN status IS NULL THEN 'no answer' ELSE 'refused' END,
                    substr(at, 1, 13), COUNT(*)
             FROM sync_log WHERE at >= ?1 AND request NOT IN ('deferred', 'none') GROUP BY 1, 2",
            since,
        )?;
        Ok(by_local_day(hours, true))
    }

    /// The slowest invoice lookups: (contract, number, ms).
    pub fn slowest_invoices(&self, n: u32) -> Result<Vec<(String, i64, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.contract_number, i.number, i.last_duration_ms FROM invoices i JOIN contracts c ON c.id = i.contract_id
             WHERE i.last_duration_ms IS NOT NULL ORDER BY i.last_duration_ms DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Invoices (or their PDFs, status `pdf ...`) failing again and again: (contract, number,
    /// status, failed attempts, last error).
    pub fn persistent_errors(&self) -> Result<Vec<PersistentError>> {
        let mut stmt = self.conn.prepare(
            "SELECT * FROM (
                SELECT c.contract_number, i.number, i.fetch_status, i.failed_attempts, COALESCE(i.last_error, '')
                FROM invoices i JOIN contracts c ON c.id = i.contract_id
                WHERE i.failed_attempts >= 2 OR i.fetch_status = 'gave_up'
                UNION ALL
                SELECT c.contract_number, i.number, 'pdf ' || i.pdf_status, i.pdf_failed_attempts, COALESCE(i.pdf_error, '')
                FROM invoices i JOIN contracts c ON c.id = i.contract_id
                WHERE i.pdf_failed_attempts >= 2 OR i.pdf_status = 'gave_up')
             ORDER BY 4 DESC, 1, 2 LIMIT 50",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

/// Sums `(key, UTC hour YYYY-MM-DDTHH, n)` rows into São Paulo days: `(key, day, n)` sorted by
/// day then key, or `(day, key, n)` with `day_first`.
fn by_local_day(rows: Triples, day_first: bool) -> Triples {
    let mut sums: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for (key, hour, n) in rows {
        let day = chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M")
            .map(|t| {
                t.and_utc()
                    .with_timezone(&chrono_tz::America::Sao_Paulo)
                    .date_naive()
                    .to_string()
            })
            .unwrap_or(hour);
        let k = if day_first { (day, key) } else { (key, day) };
        *sums.entry(k).or_default() += n;
    }
    let mut out: Triples = sums.into_iter().map(|((a, b), n)| (a, b, n)).collect();
    if !day_first {
        // Runs: by day, then job, as the chart lists them.
        out.sort_by(|x, y| (&x.1, &x.0).cmp(&(&y.1, &y.0)));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_hours_fall_into_sao_paulo_days() {
        let rows = vec![
            ("sync-queue".to_string(), "2025-11-10T02".to_string(), 3),
            ("sync-queue".to_string(), "2025-11-10T03".to_string(), 4),
        ];
        let out = super::by_local_day(rows, false);
        assert_eq!(
            out,
            vec![
                ("sync-queue".to_string(), "2025-11-09".to_string(), 3),
                ("sync-queue".to_string(), "2025-11-10".to_string(), 4),
            ]
        );
    }
}
