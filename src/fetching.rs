//! The invoice fetch engine shared by `fetch-invoices` and `retry`: workers ask the Nio API for
//! each contract's open invoices (concurrently, bounded), match them to the expected ones, save
//! PDFs; the run's task records every result in the store as it arrives. One bad contract never
//! aborts the batch; a [`NioError::Stop`] ends the run with one message; SIGTERM/SIGINT stop
//! taking new contracts and give the ones in flight a few seconds.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::clock;
use crate::domain::cpf::Cpf;
use crate::domain::matching::{self, Expected, Found, MatchOutcome};
use crate::domain::{boleto, money, pix};
use crate::files;
use crate::lifecycle::JobRun;
use crate::nio::{Answer, NioClient, NioError, NioInvoice};
use crate::output::Printer;
use crate::store::{
    Attempt, ContractWork, ErrorKind, FetchStatus, InvoiceAnswer, MatchState, PaymentStatus,
    PdfOutcome, PdfStatus,
};

/// Nio statuses that mean the invoice is paid (the API normally lists only open ones).
const PAID_STATUSES: &[&str] = &["paid", "pago", "paga", "liquidado", "liquidada", "quitado"];

/// Settings of one pass.
pub struct Engine {
    pub client: Arc<NioClient>,
    pub printer: Printer,
    pub downloads: PathBuf,
    pub pdfs: bool,
    pub concurrency: usize,
    pub origin: String,
    pub max_attempts: u32,
    /// Attempt times follow `CRM_JOBS_NOW` like every other date.
    pub clock: clock::Clock,
}

/// Removes partial PDFs left by a killed run (never under a final name: see `files`).
pub fn remove_partial_pdfs(downloads: &std::path::Path) {
    let stale = files::remove_stale_parts(&downloads.join("faturas"));
    if stale > 0 {
        tracing::info!("removed {stale} partial file(s) left by an interrupted run");
    }
}

/// What happened to one contract, as the worker saw it.
struct Done {
    work: ContractWork,
    result: Result<Vec<InvoiceAnswer>, NioError>,
    skipped: Option<String>,
    started_at: String,
    elapsed_ms: i64,
}

/// How a pass ended.
#[derive(Debug, Default)]
pub struct PassEnd {
    /// Contracts whose attempt failed transiently in this pass.
    pub transient_failures: usize,
    /// Contracts not attempted because the run was stopped or interrupted.
    pub abandoned: usize,
}

impl Engine {
    /// Fetches `work` and records everything in `run`. `retrying` marks a retry pass: a
    /// contract that now succeeds moves from failed to ok in the run's counts.
    pub async fn pass(
        &self,
        run: &mut JobRun,
        work: Vec<ContractWork>,
        retrying: bool,
    ) -> Result<PassEnd> {
        let total = work.len();
        if !retrying {
            run.plan(total);
        }
        let bar = self
            .printer
            .progress(total as u64, if retrying { "retry" } else { "fetch" });
        let queue = Arc::new(Mutex::new(VecDeque::from(work)));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency.max(1).min(total.max(1)) {
            let queue = queue.clone();
            let stop = stop.clone();
            let cancel = run.cancel.clone();
            let tx = tx.clone();
            let client = self.client.clone();
            let downloads = self.downloads.clone();
            let pdfs = self.pdfs;
            let clock = self.clock;
            workers.spawn(async move {
                loop {
                    if cancel.is_cancelled() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(work) = queue.lock().expect("queue lock").pop_front() else {
                        break;
                    };
                    let done = fetch_contract(&client, work, &downloads, pdfs, clock).await;
                    if matches!(done.result, Err(NioError::Stop(_))) {
                        // Before anyone takes another contract.
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);

        let cancel = run.cancel.clone();
        let mut stop_error: Option<String> = None;
        let mut end = PassEnd::default();
        let mut processed = 0usize;
        crate::lifecycle::collect(&mut rx, &mut workers, &cancel, "contracts", |done| {
            processed += 1;
            bar.set_message(done.work.contract_number.clone());
            if let Err(NioError::Stop(m)) = &done.result {
                if stop_error.is_none() {
                    stop_error = Some(m.clone());
                }
                return Ok(());
            }
            if self.record(run, done, retrying)? {
                end.transient_failures += 1;
            }
            bar.inc(1);
            Ok(())
        })
        .await?;
        self.printer.finish_progress(&bar);
        end.abandoned = total - processed;
        if let Some(m) = stop_error {
            return Err(anyhow!(m));
        }
        Ok(end)
    }

    /// Records one contract's result; returns true when it failed transiently.
    fn record(&self, run: &mut JobRun, done: Done, retrying: bool) -> Result<bool> {
        let work = &done.work;
        let who = describe(work);
        let invoice_ids: Vec<i64> = work.invoices.iter().map(|i| i.id).collect();
        let attempt = Attempt {
            run_id: run.run_id,
            origin: &self.origin,
            at: &done.started_at,
            duration_ms: done.elapsed_ms,
            max_attempts: self.max_attempts,
        };
        if !retrying {
            run.counts.total += 1;
            run.add("contracts", 1);
            run.add("not_available", work.not_available as i64);
        } else {
            run.add("retried", 1);
        }
        if let Some(reason) = done.skipped {
            run.store.record_failure(
                work.id,
                &invoice_ids,
                &attempt,
                &reason,
                ErrorKind::Permanent,
            )?;
            run.counts.skipped += 1;
            run.add("skipped_invalid_cpf", 1);
            tracing::warn!("{who}: skipped: {reason}");
            run.event(
                "warn",
                format!("contract `{}` skipped: {reason}", work.contract_number),
            );
            return Ok(false);
        }
        for _ in &work.invoices {
            run.item_duration(done.elapsed_ms);
        }
        run.add("invoices", work.invoices.len() as i64);
        match done.result {
            Err(err) => {
                let kind = err.kind();
                let gave_up = run.store.record_failure(
                    work.id,
                    &invoice_ids,
                    &attempt,
                    &err.to_string(),
                    kind,
                )?;
                if !retrying {
                    run.counts.failed += 1;
                }
                run.add("errors", 1);
                run.add("gave_up", gave_up as i64);
                let tail = if gave_up > 0 {
                    " (gave up: attempt limit reached)"
                } else {
                    ""
                };
                tracing::warn!("{who}: {kind} error: {err}{tail}");
                run.event(
                    "warn",
                    format!("contract `{}`: {err}", work.contract_number),
                );
                Ok(kind == ErrorKind::Transient)
            }
            Ok(answers) => {
                let transient = answers.iter().any(|a| {
                    matches!(a.problem, Some((_, ErrorKind::Transient)))
                        || pdf_failure(a) == Some(ErrorKind::Transient)
                });
                // A PDF not saved leaves the contract's work undone: the contract is failed,
                // although every invoice's answer (and payment) was recorded.
                let failed = transient || answers.iter().any(|a| pdf_failure(a).is_some());
                let recorded = run.store.record_answers(work.id, &answers, &attempt)?;
                let mut parts: Vec<(String, i64)> = Vec::new();
                for (a, r) in answers.iter().zip(&recorded) {
                    run.add(a.outcome.as_str(), 1);
                    match parts.iter_mut().find(|(k, _)| a.outcome == k.as_str()) {
                        Some((_, n)) => *n += 1,
                        None => parts.push((a.outcome.to_string(), 1)),
                    }
                    if r.fetch_status == FetchStatus::GaveUp {
                        run.add("gave_up", 1);
                    }
                    if a.payment_status == Some(PaymentStatus::Paid) {
                        run.add("paid", 1);
                        tracing::info!(
                            "{who}: invoice {}: {}",
                            number_of(work, a.invoice_id),
                            a.detail.as_deref().unwrap_or("paid")
                        );
                    }
                    match &a.pdf {
                        Some(PdfOutcome::Saved { .. }) => run.add("pdfs_saved", 1),
                        Some(PdfOutcome::Failed { error, kind }) => {
                            run.add("pdf_errors", 1);
                            let gave_up = r.pdf_status == Some(PdfStatus::GaveUp);
                            if gave_up {
                                run.add("pdf_gave_up", 1);
                            }
                            tracing::warn!(
                                "{who}: invoice {}: PDF not saved ({kind}): {error}{}",
                                number_of(work, a.invoice_id),
                                if gave_up {
                                    " (PDF gave up: attempt limit reached; the invoice is still tracked)"
                                } else {
                                    ""
                                }
                            );
                            run.event(
                                "warn",
                                format!(
                                    "contract `{}` invoice {}: PDF not saved: {error}",
                                    work.contract_number,
                                    number_of(work, a.invoice_id)
                                ),
                            );
                        }
                        None => {}
                    }
                    if let Some((problem, _)) = &a.problem {
                        run.add("problems", 1);
                        tracing::warn!(
                            "{who}: invoice {}: {problem}",
                            number_of(work, a.invoice_id)
                        );
                    }
                    if matches!(a.outcome, MatchState::Ambiguous | MatchState::ValueMismatch) {
                        let detail = a.detail.clone().unwrap_or_default();
                        tracing::warn!(
                            "{who}: invoice {}: {}: {detail}",
                            number_of(work, a.invoice_id),
                            a.outcome
                        );
                    }
                }
                match (retrying, failed) {
                    (false, false) => run.counts.ok += 1,
                    (false, true) => run.counts.failed += 1,
                    (true, false) => {
                        run.counts.failed -= 1;
                        run.counts.ok += 1;
                        run.add("recovered", 1);
                    }
                    (true, true) => {}
                }
                if self.printer.item_lines() {
                    let summary = if parts.is_empty() {
                        "nothing to look up".to_string()
                    } else {
                        parts
                            .iter()
                            .map(|(k, n)| format!("{n} {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let na = if work.not_available > 0 {
                        format!(", {} not available yet", work.not_available)
                    } else {
                        String::new()
                    };
                    tracing::info!("{who}: {summary}{na} [{}ms]", done.elapsed_ms);
                }
                Ok(transient)
            }
        }
    }
}

/// The kind of the PDF failure of an answer, if its PDF was tried and not saved.
fn pdf_failure(a: &InvoiceAnswer) -> Option<ErrorKind> {
    match &a.pdf {
        Some(PdfOutcome::Failed { kind, .. }) => Some(*kind),
        _ => None,
    }
}

fn number_of(work: &ContractWork, invoice_id: i64) -> u32 {
    work.invoices
        .iter()
        .find(|i| i.id == invoice_id)
        .map_or(0, |i| i.number)
}

/// `contract 7000100 (MARIA DA SILVA, 708.***.***-36)`: never a full CPF.
fn describe(work: &ContractWork) -> String {
    let cpf = match Cpf::parse(&work.cpf) {
        Ok(c) => c.masked(),
        Err(_) => {
            let chars: Vec<char> = work.cpf.chars().collect();
            if chars.len() > 5 {
                format!(
                    "{}***{}",
                    chars[..3].iter().collect::<String>(),
                    chars[chars.len() - 2..].iter().collect::<String>()
                )
            } else {
                "***".into()
            }
        }
    };
    format!(
        "contract `{}` ({}, {cpf})",
        work.contract_number, work.customer_name
    )
}

async fn fetch_contract(
    client: &NioClient,
    work: ContractWork,
    downloads: &std::path::Path,
    pdfs: bool,
    clock: clock::Clock,
) -> Done {
    let started = Instant::now();
    let started_at = clock::to_store(clock.now());
    let finish = |work, result, skipped| Done {
        work,
        result,
        skipped,
        started_at: started_at.clone(),
        elapsed_ms: started.elapsed().as_millis() as i64,
    };
    let cpf = match Cpf::parse(&work.cpf) {
        Ok(c) => c,
        Err(e) => return finish(work, Ok(Vec::new()), Some(format!("invalid CPF: {e}"))),
    };
    let answer = match client.debts(&cpf).await {
        Ok(a) => a,
        Err(e) => return finish(work, Err(e), None),
    };
    let (found, no_debts) = match &answer {
        Answer::Invoices(list) => (list.as_slice(), false),
        Answer::NoDebts => (&[][..], true),
    };
    let mut answers = match_all(&work, found, no_debts);
    if pdfs {
        for a in answers.iter_mut() {
            let Some(inv) = found
                .iter()
                .find(|f| Some(&f.invoice_id) == a.nio_invoice_id.as_ref())
            else {
                continue;
            };
            if a.outcome != "matched" {
                continue;
            }
            let Some(expected) = work.invoices.iter().find(|i| i.id == a.invoice_id) else {
                continue;
            };
            if !expected.pdf_wanted || expected.saved_pdf_for.as_ref() == Some(&inv.invoice_id) {
                continue;
            }
            a.pdf = Some(
                match save_pdf(client, &cpf, &work, expected.number, inv, downloads).await {
                    Ok((path, sha256)) => PdfOutcome::Saved { path, sha256 },
                    Err(e) => PdfOutcome::Failed {
                        error: e.to_string(),
                        kind: e.kind(),
                    },
                },
            );
        }
    }
    finish(work, Ok(answers), None)
}

async fn save_pdf(
    client: &NioClient,
    cpf: &Cpf,
    work: &ContractWork,
    number: u32,
    inv: &NioInvoice,
    downloads: &std::path::Path,
) -> Result<(String, String), NioError> {
    let bytes = client.pdf(cpf, inv).await?;
    let sha = hex::encode(Sha256::digest(&bytes));
    // A contract number may be 300 characters long: its folder name is cut, and kept unique.
    let dir = downloads
        .join("faturas")
        .join(files::bounded_component(&work.safra))
        .join(files::bounded_component(&work.contract_number));
    let due = inv
        .due_date
        .map(|d| d.to_string())
        .unwrap_or_else(|| "sem-vencimento".into());
    let name = format!("fatura-{number:02}-{due}.pdf");
    let path = tokio::task::spawn_blocking(move || files::write_atomic(&dir, &name, &bytes))
        .await
        .map_err(|e| NioError::Transient {
            message: format!("writing the PDF: {e}"),
            retry_after: None,
        })?
        .map_err(|e| {
            // A name the file system refuses will be refused again; a full disk may not be.
            if files::is_name_refused(&e) {
                NioError::Permanent(format!("{e:#}"))
            } else {
                NioError::Transient {
                    message: format!("{e:#}"),
                    retry_after: None,
                }
            }
        })?;
    Ok((path.display().to_string(), sha))
}

/// Matches every expected invoice of `work` against the open invoices `found`.
pub fn match_all(work: &ContractWork, found: &[NioInvoice], no_debts: bool) -> Vec<InvoiceAnswer> {
    let candidates: Vec<Found> = found
        .iter()
        .filter_map(|f| {
            f.due_date.map(|d| Found {
                due_date: d,
                amount_centavos: f.amount_centavos,
            })
        })
        .collect();
    let dated: Vec<&NioInvoice> = found.iter().filter(|f| f.due_date.is_some()).collect();
    work.invoices
        .iter()
        .map(|inv| {
            let expected = Expected {
                number: inv.number,
                due_date: inv.due_date,
                amount_centavos: inv.expected_amount_centavos,
            };
            let outcome = matching::match_invoice(&expected, &candidates);
            let mut a = InvoiceAnswer {
                invoice_id: inv.id,
                outcome: MatchState::from(&outcome),
                ..InvoiceAnswer::default()
            };
            let due = inv.due_date.map(|d| d.format("%d/%m/%Y").to_string()).unwrap_or_default();
            match outcome {
                MatchOutcome::Matched { index } => fill_matched(&mut a, dated[index]),
                MatchOutcome::Ambiguous { count } => {
                    a.detail = Some(format!("{count} open Nio invoices are due on {due}; nothing applied"));
                }
                MatchOutcome::NoMatch => match &inv.open_as {
                    // Nio lists only open invoices: one it listed open before and no longer
                    // lists was paid.
                    Some(was) => {
                        let was = if was.is_empty() {
                            String::new()
                        } else {
                            format!(" as invoice `{was}`")
                        };
                        a.payment_status = Some(PaymentStatus::Paid);
                        a.detail = Some(if no_debts {
                            format!("paid: Nio listed it open{was} before, and lists no open debt for this CPF now")
                        } else {
                            format!("paid: Nio listed it open{was} before, and no open invoice is due on {due} now")
                        });
                    }
                    None => {
                        a.detail = Some(if no_debts {
                            "Nio lists no open debt for this CPF (paid, or not issued yet)".into()
                        } else {
                            format!("no open Nio invoice is due on {due} (paid, or not issued yet)")
                        });
                    }
                },
                MatchOutcome::ValueMismatch { expected, found, index } => {
                    a.detail = Some(format!(
                        "the spreadsheet says {} but Nio says {} (invoice `{}`); nothing applied",
                        money::format_brl(expected),
                        money::format_brl(found),
                        dated[index].invoice_id
                    ));
                }
                MatchOutcome::NoDueDate => {
                    a.detail = Some("the invoice has no due date to match on; import one with `crm-jobs import invoices`".into());
                }
            }
            a
        })
        .collect()
}

fn fill_matched(a: &mut InvoiceAnswer, f: &NioInvoice) {
    a.amount_centavos = f.amount_centavos;
    a.nio_debt_id = Some(f.debt_id.clone());
    a.nio_invoice_id = Some(f.invoice_id.clone());
    a.nio_status = f.status.clone();
    a.reference_month = f.reference_month.clone();
    let paid = f
        .status
        .as_deref()
        .is_some_and(|s| PAID_STATUSES.contains(&s.to_lowercase().as_str()));
    a.payment_status = Some(if paid {
        PaymentStatus::Paid
    } else {
        PaymentStatus::Open
    });
    if paid {
        a.detail = Some(format!(
            "paid: Nio lists invoice `{}` with the status `{}`",
            f.invoice_id,
            f.status.as_deref().unwrap_or_default()
        ));
    }
    let mut problems = Vec::new();
    if let Some(code) = &f.barcode {
        match boleto::validate_any(code) {
            Ok(l) => a.barcode = Some(l.digits),
            Err(e) => problems.push(format!("barcode not recorded: {e}")),
        }
    }
    if let Some(code) = &f.pix_code {
        match pix::validate(code) {
            Ok(()) => a.pix_code = Some(code.trim().to_string()),
            Err(e) => problems.push(format!("PIX code not recorded: {e}")),
        }
    }
    if f.amount_centavos.is_none() {
        problems.push("Nio gave no readable amount".into());
    }
    if !problems.is_empty() {
        a.problem = Some((problems.join("; "), ErrorKind::Permanent));
    }
}
