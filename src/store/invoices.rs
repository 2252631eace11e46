//! SQL of contracts, their expected invoices and the Nio bootstrap cache.

use std::sync::LazyLock;

use anyhow::Result;
use chrono::{Datelike, NaiveDate};
use rusqlite::{OptionalExtension, params};

use super::{ErrorKind, FetchStatus, MatchState, PaymentStatus, PdfStatus, Store};

const DATE: &str = "%Y-%m-%d";

fn date_text(d: NaiveDate) -> String {
    // As `DATE`, without parsing a format at each of an import's two million dates.
    let (y, m, day) = (d.year(), d.month(), d.day());
    if !(0..=9999).contains(&y) {
        return d.format(DATE).to_string();
    }
    let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
    let y = y as u32;
    [
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        '-',
        digit(m / 10),
        digit(m),
        '-',
        digit(day / 10),
        digit(day),
    ]
    .iter()
    .collect()
}

/// Expected invoices written by one statement of [`Store::upsert_contracts`] (six parameters
/// each, far below SQLite's limit of 32,766).
const INVOICES_PER_STATEMENT: usize = 500;

/// The upsert of `rows` expected invoices: per invoice, its contract, number, due date,
/// available-from date, the contract's amount and that amount's source (`contract`, or NULL
/// without an amount). An imported due date (`import invoices`) is kept, and so is an amount
/// imported for the invoice itself.
fn invoices_upsert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p = 6 * i;
            format!(
                "(?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            )
        })
        .collect();
    format!(
        "INSERT INTO invoices (contract_id, number, due_date, available_from,
                    expected_amount_centavos, expected_amount_source)
         VALUES {}
         ON CONFLICT (contract_id, number) DO UPDATE SET
            due_date = CASE WHEN due_date_source = 'computed'
                            THEN excluded.due_date ELSE due_date END,
            available_from = CASE WHEN due_date_source = 'computed'
                                  THEN excluded.available_from ELSE available_from END,
            expected_amount_source = CASE
                WHEN excluded.expected_amount_centavos IS NOT NULL
                     AND (expected_amount_source = 'contract' OR expected_amount_centavos IS NULL)
                THEN 'contract' ELSE expected_amount_source END,
            expected_amount_centavos = CASE
                WHEN excluded.expected_amount_centavos IS NOT NULL
                     AND (expected_amount_source = 'contract' OR expected_amount_centavos IS NULL)
                THEN excluded.expected_amount_centavos ELSE expected_amount_centavos END",
        values.join(", ")
    )
}

fn parse_date(text: Option<String>) -> Option<NaiveDate> {
    text.and_then(|t| NaiveDate::parse_from_str(&t, DATE).ok())
}

/// A contract as imported.
pub struct ContractImport<'a> {
    pub contract_number: &'a str,
    pub service_order: Option<&'a str>,
    pub cpf: std::borrow::Cow<'a, str>,
    pub customer_name: &'a str,
    pub installed_on: NaiveDate,
    pub safra: std::borrow::Cow<'a, str>,
    /// The sheet's `valor`: the expected amount of each of the contract's invoices (an
    /// invoice's own `valor` from `import invoices` wins).
    pub expected_amount_centavos: Option<i64>,
}

/// A contract of an import with its expected invoices.
pub struct ContractRow<'a> {
    pub contract: ContractImport<'a>,
    pub expected: Vec<ExpectedInvoice>,
}

/// One expected invoice computed from the installation date.
pub struct ExpectedInvoice {
    pub number: u32,
    pub due_date: NaiveDate,
    pub available_from: NaiveDate,
}

/// A contract picked for fetching, with the invoices to look up.
#[derive(Debug, Clone)]
pub struct ContractWork {
    pub id: i64,
    pub contract_number: String,
    pub cpf: String,
    pub customer_name: String,
    pub safra: String,
    /// Invoices to look up: unpaid, available, not given up (or, for `retry`, those to retry).
    pub invoices: Vec<InvoiceWork>,
    /// Unpaid invoices of this contract not yet available.
    pub not_available: u32,
}

/// An invoice to look up.
#[derive(Debug, Clone)]
pub struct InvoiceWork {
    pub id: i64,
    pub number: u32,
    pub due_date: Option<NaiveDate>,
    pub expected_amount_centavos: Option<i64>,
    /// The Nio invoice it was matched to while `open` (empty when Nio gave no id); `None` when
    /// it was never seen open.
    pub open_as: Option<String>,
    /// The Nio invoice whose PDF is already saved, if any.
    pub saved_pdf_for: Option<String>,
    /// Whether its PDF may be tried in this pass: not given up, and not already failed
    /// permanently in this run (a permanent failure is tried again by the next run only).
    pub pdf_wanted: bool,
}

/// Which contracts `fetch-invoices` takes.
pub struct FetchSelection<'a> {
    pub today: NaiveDate,
    /// At most this many contracts; `None`: every due contract (`--all`).
    pub limit: Option<u32>,
    pub safra: Option<&'a str>,
    pub contract: Option<&'a str>,
}

/// The result of looking up one invoice in an answer.
#[derive(Debug, Default, Clone)]
pub struct InvoiceAnswer {
    pub invoice_id: i64,
    pub outcome: MatchState,
    pub detail: Option<String>,
    pub amount_centavos: Option<i64>,
    /// `Some(Open)` or `Some(Paid)` when the answer says so.
    pub payment_status: Option<PaymentStatus>,
    pub nio_debt_id: Option<String>,
    pub nio_invoice_id: Option<String>,
    pub nio_status: Option<String>,
    pub reference_month: Option<String>,
    pub barcode: Option<String>,
    pub pix_code: Option<String>,
    /// What became of its PDF in this attempt; `None` when it was not tried.
    pub pdf: Option<PdfOutcome>,
    /// A part of the answer that failed its check (PIX, barcode, amount): the invoice is
    /// `partial`.
    pub problem: Option<(String, ErrorKind)>,
}

/// One try of an invoice's PDF. Its status, attempts and give-up are the PDF's own: they never
/// change the invoice's `fetch_status`, so its payment keeps being tracked.
#[derive(Debug, Clone)]
pub enum PdfOutcome {
    /// Written to `path`.
    Saved { path: String, sha256: String },
    /// Not saved, for a transient or a permanent reason.
    Failed { error: String, kind: ErrorKind },
}

/// How one recorded invoice ended, as stored (in the order of the answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub fetch_status: FetchStatus,
    pub pdf_status: Option<PdfStatus>,
}

/// Tracking fields common to every attempt.
pub struct Attempt<'a> {
    pub run_id: i64,
    pub origin: &'a str,
    pub at: &'a str,
    pub duration_ms: i64,
    pub max_attempts: u32,
}

/// One exported invoice row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InvoiceExport {
    pub contract: String,
    pub service_order: Option<String>,
    pub cpf: String,
    pub customer: String,
    pub safra: String,
    pub number: u32,
    pub due_date: Option<String>,
    pub due_date_source: String,
    pub amount_centavos: Option<i64>,
    pub payment_status: PaymentStatus,
    pub pix_code: Option<String>,
    pub barcode: Option<String>,
    pub pdf_path: Option<String>,
    pub pdf_sha256: Option<String>,
    pub match_outcome: Option<MatchState>,
    pub match_detail: Option<String>,
    pub fetch_status: FetchStatus,
    pub fetch_origin: Option<String>,
    pub attempts: i64,
    pub failed_attempts: i64,
    pub last_attempt_at: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    pub nio_debt_id: Option<String>,
    pub nio_invoice_id: Option<String>,
    pub expected_amount_centavos: Option<i64>,
    pub paid_detected_at: Option<String>,
    pub pdf_status: Option<PdfStatus>,
    pub pdf_attempts: i64,
    pub pdf_failed_attempts: i64,
    pub pdf_error: Option<String>,
}

/// The Nio bootstrap cache, both parts sealed.
pub struct NioSessionCache {
    pub params: String,
    pub session: Option<String>,
    pub obtained_at: String,
}

impl Store {
    /// Inserts or updates contracts and their expected invoices, in one transaction (or the
    /// caller's, inside [`Store::in_one_transaction`]). Imported due dates are kept, and so are
    /// expected amounts imported per invoice. A contract may come twice: the later row wins,
    /// as if imported one after the other. Returns how many contracts are new.
    pub fn upsert_contracts(&mut self, rows: &[ContractRow<'_>], now: &str) -> Result<usize> {
        let tx = self.write_tx()?;
        let mut new = 0;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let c = &row.contract;
            // Cached statements: an import of 100,000 contracts runs these 100,000 times.
            let existing: Option<i64> = tx
                .prepare_cached("SELECT id FROM contracts WHERE contract_number = ?1")?
                .query_row([c.contract_number], |r| r.get(0))
                .optional()?;
            let installed = date_text(c.installed_on);
            let id = match existing {
                Some(id) => {
                    tx.prepare_cached(
                        "UPDATE contracts SET service_order = ?2, cpf = ?3, customer_name = ?4,
                                installed_on = ?5, safra = ?6, updated_at = ?7 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        c.service_order,
                        c.cpf,
                        c.customer_name,
                        installed,
                        c.safra,
                        now
                    ])?;
                    id
                }
                None => {
                    tx.prepare_cached(
                        "INSERT INTO contracts (contract_number, service_order, cpf, customer_name,
                                installed_on, safra, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    )?
                    .execute(params![
                        c.contract_number,
                        c.service_order,
                        c.cpf,
                        c.customer_name,
                        installed,
                        c.safra,
                        now
                    ])?;
                    new += 1;
                    tx.last_insert_rowid()
                }
            };
            ids.push(id);
        }
        // The invoices of many contracts in one statement: the table's CHECK constraints with
        // an `IN` list of three values or more build a small temporary index each time a
        // statement runs (not each row), which took half the time of an import when each
        // invoice had its statement.
        struct Invoice<'a> {
            contract_id: i64,
            number: u32,
            due: String,
            available: String,
            amount: Option<i64>,
            source: Option<&'a str>,
        }
        let invoices: Vec<Invoice> = rows
            .iter()
            .zip(&ids)
            .flat_map(|(row, &contract_id)| {
                let amount = row.contract.expected_amount_centavos;
                row.expected.iter().map(move |e| Invoice {
                    contract_id,
                    number: e.number,
                    due: date_text(e.due_date),
                    available: date_text(e.available_from),
                    amount,
                    source: amount.map(|_| "contract"),
                })
            })
            .collect();
        static FULL: LazyLock<String> =
            LazyLock::new(|| invoices_upsert_sql(INVOICES_PER_STATEMENT));
        for chunk in invoices.chunks(INVOICES_PER_STATEMENT) {
            let mut insert = if chunk.len() == INVOICES_PER_STATEMENT {
                tx.prepare_cached(&FULL)?
            } else {
                tx.prepare_cached(&invoices_upsert_sql(chunk.len()))?
            };
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 6);
            for i in chunk {
                let row: [&dyn rusqlite::ToSql; 6] = [
                    &i.contract_id,
                    &i.number,
                    &i.due,
                    &i.available,
                    &i.amount,
                    &i.source,
                ];
                values.extend(row);
            }
            insert.execute(values.as_slice())?;
        }
        tx.commit()?;
        Ok(new)
    }

    /// The installation date of a contract, by number.
    pub fn contract_installed_on(&self, contract_number: &str) -> Result<Option<NaiveDate>> {
        // Cached: `import invoices` asks it for every row.
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT installed_on FROM contracts WHERE contract_number = ?1")?
            .query_row([contract_number], |r| r.get(0))
            .optional()?;
        Ok(parse_date(text))
    }

    /// Sets an imported due date (and expected amount) on invoice `number` of a contract.
    /// Returns false when the contract is unknown.
    pub fn import_due_date(
        &mut self,
        contract_number: &str,
        number: u32,
        due: NaiveDate,
        available_from: NaiveDate,
        amount_centavos: Option<i64>,
    ) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE invoices SET due_date = ?3, available_from = ?4, due_date_source = 'imported',
                    expected_amount_centavos = COALESCE(?5, expected_amount_centavos),
                    expected_amount_source = CASE WHEN ?5 IS NOT NULL THEN 'invoice'
                                                  ELSE expected_amount_source END
             WHERE number = ?2
               AND contract_id = (SELECT id FROM contracts WHERE contract_number = ?1)",
            )?
            .execute(params![
                contract_number,
                number,
                date_text(due),
                date_text(available_from),
                amount_centavos
            ])?;
        Ok(changed > 0)
    }

    /// Contracts with invoices to look up, least recently fetched first.
    pub fn contracts_to_fetch(&self, sel: &FetchSelection) -> Result<Vec<ContractWork>> {
        let today = date_text(sel.today);
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.contract_number, c.cpf, c.customer_name, c.safra
             FROM contracts c
             WHERE (?2 IS NULL OR c.safra = ?2) AND (?3 IS NULL OR c.contract_number = ?3)
               AND EXISTS (SELECT 1 FROM invoices i WHERE i.contract_id = c.id
                             AND i.payment_status <> 'paid' AND i.fetch_status <> 'gave_up'
                             AND (i.available_from IS NULL OR i.available_from <= ?1))
             ORDER BY c.last_fetch_at IS NOT NULL, c.last_fetch_at, c.id
             LIMIT ?4",
        )?;
        // A negative LIMIT is no limit.
        let limit = sel.limit.map_or(-1, i64::from);
        let contracts = stmt
            .query_map(
                params![today, sel.safra, sel.contract, limit],
                contract_head,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(contracts.len());
        for mut c in contracts {
            self.fill_invoices(&mut c, &today, None)?;
            out.push(c);
        }
        Ok(out)
    }

    /// Contracts with an invoice whose lookup or PDF failed transiently and is below
    /// `max_attempts` (`only_run`: in that run). Like [`Store::contracts_to_fetch`], every
    /// unpaid, available invoice of such a contract is listed: the one answer covers them all.
    pub fn contracts_to_retry(
        &self,
        today: NaiveDate,
        max_attempts: u32,
        only_run: Option<i64>,
    ) -> Result<Vec<ContractWork>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.contract_number, c.cpf, c.customer_name, c.safra
             FROM contracts c
             WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.contract_id = c.id
                             AND (?2 IS NULL OR i.last_run_id = ?2)
                             AND ((i.fetch_status IN ('error', 'partial') AND i.error_kind = 'transient'
                                   AND i.failed_attempts < ?1)
                                  OR (i.pdf_status = 'error' AND i.pdf_error_kind = 'transient'
                                      AND i.pdf_failed_attempts < ?1)))
             ORDER BY c.last_fetch_at, c.id",
        )?;
        let contracts = stmt
            .query_map(params![max_attempts, only_run], contract_head)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let today = date_text(today);
        let mut out = Vec::with_capacity(contracts.len());
        for mut c in contracts {
            self.fill_invoices(&mut c, &today, only_run)?;
            out.push(c);
        }
        Ok(out)
    }

    /// Lists the invoices of `c` to look up: every one not `paid` and available (a `gave_up`
    /// one too: the contract is asked anyway, and its answer is free). `run`: the run in
    /// progress, whose permanent PDF failures are not tried again in it.
    fn fill_invoices(&self, c: &mut ContractWork, today: &str, run: Option<i64>) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, number, due_date, expected_amount_centavos,
                    (available_from IS NULL OR available_from <= ?2),
                    CASE WHEN pdf_sha256 IS NOT NULL THEN nio_invoice_id END,
                    CASE WHEN payment_status = 'open' THEN COALESCE(nio_invoice_id, '') END,
                    CASE WHEN pdf_status = 'gave_up' THEN 0
                         WHEN pdf_status = 'error' AND pdf_error_kind = 'permanent'
                              AND last_run_id = ?3 THEN 0
                         ELSE 1 END
             FROM invoices
             WHERE contract_id = ?1 AND payment_status <> 'paid'
             ORDER BY number",
        )?;
        let mut rows = stmt.query(params![c.id, today, run])?;
        while let Some(r) = rows.next()? {
            let available: bool = r.get(4)?;
            if !available {
                c.not_available += 1;
                continue;
            }
            c.invoices.push(InvoiceWork {
                id: r.get(0)?,
                number: r.get(1)?,
                due_date: parse_date(r.get(2)?),
                expected_amount_centavos: r.get(3)?,
                saved_pdf_for: r.get(5)?,
                open_as: r.get(6)?,
                pdf_wanted: r.get(7)?,
            });
        }
        Ok(())
    }

    /// Lookups and PDFs at or over the attempt limit whose last try failed become `gave_up`
    /// (for a limit lowered since). Returns how many invoices and how many PDFs.
    pub fn give_up_exhausted(&mut self, max_attempts: u32) -> Result<(usize, usize)> {
        let tx = self.conn.transaction()?;
        let invoices = tx.execute(
            "UPDATE invoices SET fetch_status = 'gave_up'
             WHERE fetch_status IN ('error', 'partial') AND error_kind = 'transient'
               AND failed_attempts >= ?1",
            [max_attempts],
        )?;
        let pdfs = tx.execute(
            "UPDATE invoices SET pdf_status = 'gave_up'
             WHERE pdf_status = 'error' AND pdf_failed_attempts >= ?1",
            [max_attempts],
        )?;
        tx.commit()?;
        Ok((invoices, pdfs))
    }

    /// Resets given-up invoices and PDFs (of one contract, or all) so that they are tried
    /// again. Returns how many invoices.
    pub fn reset_gave_up(&mut self, contract_number: Option<&str>) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE invoices SET
                fetch_status = CASE WHEN fetch_status = 'gave_up' THEN 'pending' ELSE fetch_status END,
                failed_attempts = CASE WHEN fetch_status = 'gave_up' THEN 0 ELSE failed_attempts END,
                error_kind = CASE WHEN fetch_status = 'gave_up' THEN NULL ELSE error_kind END,
                pdf_status = CASE WHEN pdf_status = 'gave_up' THEN 'error' ELSE pdf_status END,
                pdf_failed_attempts = CASE WHEN pdf_status = 'gave_up' THEN 0 ELSE pdf_failed_attempts END
             WHERE (fetch_status = 'gave_up' OR pdf_status = 'gave_up')
               AND (?1 IS NULL OR contract_id = (SELECT id FROM contracts WHERE contract_number = ?1))",
            params![contract_number],
        )?)
    }

    /// Whether a contract number exists.
    pub fn contract_exists(&self, contract_number: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM contracts WHERE contract_number = ?1",
                [contract_number],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records a failed attempt on invoices; those reaching `max_attempts` become `gave_up`.
    /// Returns how many gave up.
    pub fn record_failure(
        &mut self,
        contract_id: i64,
        invoice_ids: &[i64],
        attempt: &Attempt,
        error: &str,
        kind: ErrorKind,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut gave_up = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE invoices SET attempts = attempts + 1, failed_attempts = failed_attempts + 1,
                        fetch_status = CASE WHEN ?6 = 'transient' AND failed_attempts + 1 >= ?7
                                            THEN 'gave_up' ELSE 'error' END,
                        error_kind = ?6, last_error = ?5, last_attempt_at = ?3,
                        last_duration_ms = ?4, fetch_origin = ?2, last_run_id = ?8
                 WHERE id = ?1 RETURNING fetch_status",
            )?;
            for id in invoice_ids {
                let status: FetchStatus = stmt.query_row(
                    params![
                        id,
                        attempt.origin,
                        attempt.at,
                        attempt.duration_ms,
                        error,
                        kind,
                        attempt.max_attempts,
                        attempt.run_id
                    ],
                    |r| r.get(0),
                )?;
                if status == FetchStatus::GaveUp {
                    gave_up += 1;
                }
            }
        }
        tx.execute(
            "UPDATE contracts SET last_fetch_at = ?2 WHERE id = ?1",
            params![contract_id, attempt.at],
        )?;
        tx.commit()?;
        Ok(gave_up)
    }

    /// Records the answers for a contract's invoices in one transaction, and returns how each
    /// invoice ended (`gave_up` when a transient problem reached the limit; a PDF gives up on its
    /// own). The payment status is the answer's (`paid` from the caller, who knows the invoice
    /// was open before); the PDF's columns change only when it was tried.
    pub fn record_answers(
        &mut self,
        contract_id: i64,
        answers: &[InvoiceAnswer],
        attempt: &Attempt,
    ) -> Result<Vec<Recorded>> {
        let tx = self.conn.transaction()?;
        let mut recorded = Vec::with_capacity(answers.len());
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE invoices SET
                    match_outcome = ?2, match_detail = ?3,
                    amount_centavos = CASE WHEN ?2 = 'matched' THEN ?4 ELSE amount_centavos END,
                    payment_status = COALESCE(?5, payment_status),
                    paid_detected_at = CASE
                        WHEN ?5 = 'paid' AND paid_detected_at IS NULL THEN ?14
                        ELSE paid_detected_at END,
                    nio_debt_id = COALESCE(?6, nio_debt_id), nio_invoice_id = COALESCE(?7, nio_invoice_id),
                    nio_status = COALESCE(?8, nio_status), reference_month = COALESCE(?9, reference_month),
                    barcode = COALESCE(?10, barcode), pix_code = COALESCE(?11, pix_code),
                    pdf_path = COALESCE(?12, pdf_path), pdf_sha256 = COALESCE(?13, pdf_sha256),
                    pdf_status = CASE
                        WHEN ?13 IS NOT NULL THEN 'saved'
                        WHEN ?21 IS NOT NULL AND pdf_failed_attempts + 1 >= ?19 THEN 'gave_up'
                        WHEN ?21 IS NOT NULL THEN 'error'
                        ELSE pdf_status END,
                    pdf_attempts = pdf_attempts + (?13 IS NOT NULL OR ?21 IS NOT NULL),
                    pdf_failed_attempts = CASE
                        WHEN ?13 IS NOT NULL THEN 0
                        WHEN ?21 IS NOT NULL THEN pdf_failed_attempts + 1
                        ELSE pdf_failed_attempts END,
                    pdf_error = CASE WHEN ?13 IS NOT NULL THEN NULL ELSE COALESCE(?21, pdf_error) END,
                    pdf_error_kind = CASE WHEN ?13 IS NOT NULL THEN NULL ELSE COALESCE(?22, pdf_error_kind) END,
                    attempts = attempts + 1,
                    failed_attempts = CASE WHEN ?15 IS NULL THEN 0 ELSE failed_attempts + 1 END,
                    fetch_status = CASE WHEN ?15 IS NULL THEN 'success'
                                        WHEN ?16 = 'transient' AND failed_attempts + 1 >= ?19 THEN 'gave_up'
                                        ELSE 'partial' END,
                    error_kind = ?16, last_error = ?15,
                    last_attempt_at = ?14, last_duration_ms = ?17, fetch_origin = ?18, last_run_id = ?20
                 WHERE id = ?1 RETURNING fetch_status, pdf_status",
            )?;
            for a in answers {
                let (problem, kind) = match &a.problem {
                    Some((p, k)) => (Some(p.as_str()), Some(*k)),
                    None => (None, None),
                };
                let (pdf_path, pdf_sha256, pdf_error, pdf_kind) = match &a.pdf {
                    Some(PdfOutcome::Saved { path, sha256 }) => {
                        (Some(path.as_str()), Some(sha256.as_str()), None, None)
                    }
                    Some(PdfOutcome::Failed { error, kind }) => {
                        (None, None, Some(error.as_str()), Some(*kind))
                    }
                    None => (None, None, None, None),
                };
                let (fetch_status, pdf_status) = stmt.query_row(
                    params![
                        a.invoice_id,
                        a.outcome,
                        a.detail,
                        a.amount_centavos,
                        a.payment_status,
                        a.nio_debt_id,
                        a.nio_invoice_id,
                        a.nio_status,
                        a.reference_month,
                        a.barcode,
                        a.pix_code,
                        pdf_path,
                        pdf_sha256,
                        attempt.at,
                        problem,
                        kind,
                        attempt.duration_ms,
                        attempt.origin,
                        attempt.max_attempts,
                        attempt.run_id,
                        pdf_error,
                        pdf_kind
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                recorded.push(Recorded {
                    fetch_status,
                    pdf_status,
                });
            }
        }
        tx.execute(
            "UPDATE contracts SET last_fetch_at = ?2 WHERE id = ?1",
            params![contract_id, attempt.at],
        )?;
        tx.commit()?;
        Ok(recorded)
    }

    /// Invoices for export, by contract and number.
    /// Hands every invoice row for export to `each`, in order, one at a time: a million rows
    /// never stand in memory together.
    pub fn export_invoices(
        &self,
        safra: Option<&str>,
        contract: Option<&str>,
        each: &mut dyn FnMut(InvoiceExport) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT c.contract_number, c.service_order, c.cpf, c.customer_name, c.safra, i.number,
                    i.due_date, i.due_date_source, i.amount_centavos, i.payment_status, i.pix_code,
                    i.barcode, i.pdf_path, i.pdf_sha256, i.match_outcome, i.match_detail,
                    i.fetch_status, i.fetch_origin, i.attempts, i.failed_attempts,
                    i.last_attempt_at, i.last_duration_ms, i.last_error, i.nio_debt_id,
                    i.nio_invoice_id, i.expected_amount_centavos, i.paid_detected_at, i.pdf_status,
                    i.pdf_attempts, i.pdf_failed_attempts, i.pdf_error
             FROM invoices i JOIN contracts c ON c.id = i.contract_id
             WHERE (?1 IS NULL OR c.safra = ?1) AND (?2 IS NULL OR c.contract_number = ?2)
             ORDER BY c.contract_number, i.number",
        )?;
        let mut rows = stmt.query(params![safra, contract])?;
        while let Some(r) = rows.next()? {
            each(InvoiceExport {
                contract: r.get(0)?,
                service_order: r.get(1)?,
                cpf: r.get(2)?,
                customer: r.get(3)?,
                safra: r.get(4)?,
                number: r.get(5)?,
                due_date: r.get(6)?,
                due_date_source: r.get(7)?,
                amount_centavos: r.get(8)?,
                payment_status: r.get(9)?,
                pix_code: r.get(10)?,
                barcode: r.get(11)?,
                pdf_path: r.get(12)?,
                pdf_sha256: r.get(13)?,
                match_outcome: r.get(14)?,
                match_detail: r.get(15)?,
                fetch_status: r.get(16)?,
                fetch_origin: r.get(17)?,
                attempts: r.get(18)?,
                failed_attempts: r.get(19)?,
                last_attempt_at: r.get(20)?,
                last_duration_ms: r.get(21)?,
                last_error: r.get(22)?,
                nio_debt_id: r.get(23)?,
                nio_invoice_id: r.get(24)?,
                expected_amount_centavos: r.get(25)?,
                paid_detected_at: r.get(26)?,
                pdf_status: r.get(27)?,
                pdf_attempts: r.get(28)?,
                pdf_failed_attempts: r.get(29)?,
                pdf_error: r.get(30)?,
            })?;
        }
        Ok(())
    }

    /// The cached Nio bootstrap, if any.
    pub fn nio_session(&self) -> Result<Option<NioSessionCache>> {
        Ok(self
            .conn
            .query_row(
                "SELECT params, session, obtained_at FROM nio_session WHERE id = 1",
                [],
                |r| {
                    Ok(NioSessionCache {
                        params: r.get(0)?,
                        session: r.get(1)?,
                        obtained_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Replaces the cached Nio bootstrap.
    pub fn save_nio_session(&mut self, cache: &NioSessionCache) -> Result<()> {
        self.conn.execute(
            "INSERT INTO nio_session (id, params, session, obtained_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET params = excluded.params, session = excluded.session,
                    obtained_at = excluded.obtained_at",
            params![cache.params, cache.session, cache.obtained_at],
        )?;
        Ok(())
    }

    /// Forgets the cached Nio bootstrap.
    pub fn clear_nio_session(&mut self) -> Result<()> {
        self.conn.execute("DELETE FROM nio_session", [])?;
        Ok(())
    }

    /// Counts of invoices by fetch status (for summaries and tests).
    pub fn invoice_status_counts(&self) -> Result<Vec<(String, i64)>> {
        self.counts_by("fetch_status")
    }

    /// Counts of invoices by payment status (`open`, `paid`, `unknown`).
    pub fn invoice_payment_counts(&self) -> Result<Vec<(String, i64)>> {
        self.counts_by("payment_status")
    }

    /// Counts of invoices by PDF status, of those whose PDF was tried.
    pub fn invoice_pdf_counts(&self) -> Result<Vec<(String, i64)>> {
        self.counts_by("pdf_status")
    }

    /// Counts of invoices by one of their status columns (rows where it is set), in its order.
    fn counts_by(&self, column: &'static str) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {column}, COUNT(*) FROM invoices WHERE {column} IS NOT NULL
             GROUP BY {column} ORDER BY {column}"
        ))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The latest run of `fetch-invoices` or `retry` that ended (not interrupted) after looking
    /// up at least one contract, and how many invoices it found
    /// newly paid: (job, run id, paid).
    pub fn newly_paid(&self) -> Result<Option<(String, i64, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT job, id, COALESCE(json_extract(counters, '$.paid'), 0) FROM runs
                 WHERE job IN ('fetch-invoices', 'retry') AND status IN ('success', 'partial', 'failed')
                   AND items_total > 0 AND json_valid(counters)
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }
}

fn contract_head(r: &rusqlite::Row) -> rusqlite::Result<ContractWork> {
    Ok(ContractWork {
        id: r.get(0)?,
        contract_number: r.get(1)?,
        cpf: r.get(2)?,
        customer_name: r.get(3)?,
        safra: r.get(4)?,
        invoices: Vec::new(),
        not_available: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn dates_are_written_as_the_format_writes_them() {
        for text in ["2000-01-01", "2025-06-05", "2100-12-31", "0999-03-04"] {
            let d = NaiveDate::parse_from_str(text, DATE).unwrap();
            assert_eq!(date_text(d), d.format(DATE).to_string());
        }
    }

    fn row<'a>(number: &'a str, installed: &str, amount: Option<i64>) -> ContractRow<'a> {
        let installed = NaiveDate::parse_from_str(installed, DATE).unwrap();
        ContractRow {
            contract: ContractImport {
                contract_number: number,
                service_order: None,
                cpf: Cow::Borrowed("70899057136"),
                customer_name: "ANA",
                installed_on: installed,
                safra: Cow::Borrowed("2025-01"),
                expected_amount_centavos: amount,
            },
            expected: (1..=10)
                .map(|n| ExpectedInvoice {
                    number: n,
                    due_date: installed + chrono::Days::new(30 * u64::from(n)),
                    available_from: installed,
                })
                .collect(),
        }
    }

    /// A contract twice in one batch ends as if its rows were imported one after the other.
    #[test]
    fn a_contract_twice_in_one_batch_ends_as_its_later_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("crm.db")).unwrap();
        let rows = [
            row("A", "2025-01-05", Some(9990)),
            row("B", "2025-01-05", None),
            row("A", "2025-02-05", None),
        ];
        assert_eq!(store.upsert_contracts(&rows, "now").unwrap(), 2);
        let (installed, invoices, amounts, first_due): (String, i64, i64, String) = store
            .conn
            .query_row(
                "SELECT c.installed_on, COUNT(*), SUM(i.expected_amount_centavos = 9990),
                        MIN(i.due_date)
                 FROM contracts c JOIN invoices i ON i.contract_id = c.id
                 WHERE c.contract_number = 'A'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(installed, "2025-02-05");
        assert_eq!(invoices, 10);
        assert_eq!(amounts, 10, "an empty amount keeps the one before");
        assert_eq!(first_due, "2025-03-07");
        let total: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM invoices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 20);
    }
}
