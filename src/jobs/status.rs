//! `crm-jobs status`: at a glance, for every job, the last run, a run in progress, whether it is
//! paused, failures in a row, why its last run failed; and the work waiting in the store, with
//! the invoices newly found paid by the last invoice run, the queue items that wait for a failed
//! one and a pause the CRM asked for.

use anyhow::Result;
use chrono::Datelike;
use serde_json::json;

use super::Ctx;
use crate::exit::Code;
use crate::job::Job;
use crate::output::human_duration;
use crate::store::RunStatus;

/// Arguments of `status` (`--json` gives the same as JSON).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> Result<Code> {
    let store = ctx.open_store_for_reading()?;
    let states: Vec<_> = Job::ALL
        .iter()
        .map(|j| store.job_state(j.as_str()))
        .collect::<Result<_>>()?;
    let plan = &ctx.plan;
    let now = ctx.clock.now();
    let next: Vec<Option<chrono::DateTime<chrono::Utc>>> = Job::ALL
        .iter()
        .map(|j| crate::timers::next_start(plan, j.as_str(), now))
        .collect();
    let today = ctx.clock.today();
    let invoices = store.invoice_status_counts()?;
    let payments = store.invoice_payment_counts()?;
    let newly_paid = store.newly_paid()?;
    let pdfs = store.invoice_pdf_counts()?;
    let queue = store.queue_counts()?;
    let oldest = store.oldest_pending_item()?;
    let blocked = store.blocked_items()?;
    // The CRM's pause runs on the real clock, whatever `CRM_JOBS_NOW` says.
    let crm_pause = store
        .rate_pause_of("crm")?
        .and_then(|p| chrono::DateTime::from_timestamp_millis(p.until_ms))
        .filter(|until| *until > chrono::Utc::now());
    let emails = store.email_counts()?;
    let boletos = store.boletos_missing(today.year(), today.month())?;
    if ctx.printer.json {
        ctx.printer.json_out(&json!({
            "jobs": states.iter().zip(&next).map(|(s, n)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["next_start"] = json!(n.map(crate::clock::to_store));
                v
            }).collect::<Vec<_>>(),
            "work": {
                "invoices": invoices.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "invoice_payments": payments.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "newly_paid": newly_paid.as_ref().map(|(job, run, n)| json!({"job": job, "run_id": run, "invoices": n})),
                "invoice_pdfs": pdfs.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "queue": queue.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "queue_oldest_pending": oldest,
                "queue_blocked": blocked,
                "crm_paused_until": crm_pause.map(crate::clock::to_store),
                "emails": emails.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "boletos_missing_this_month": boletos.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            },
        }));
        return Ok(Code::Success);
    }
    crate::outln!(
        "{:<17} {:<12} {:<25} {:>9} {:>14} {:>9}  {:<17} paused",
        "job",
        "last",
        "started",
        "took",
        "ok/failed",
        "failing",
        "next start"
    );
    for (s, next) in states.iter().zip(&next) {
        let next = next
            .map(|t| {
                t.with_timezone(&chrono_tz::America::Sao_Paulo)
                    .format("%Y-%m-%d %H:%M")
                    .to_string()
            })
            .unwrap_or_else(|| "not scheduled".into());
        let (status, started, items) = match &s.last_run {
            Some(r) => (
                r.status.as_str(),
                r.started_at.as_str(),
                match (r.status.as_str(), r.items_planned) {
                    // A run in progress: its counts so far, of what it set out to take.
                    ("running", Some(planned)) => {
                        format!("{}/{} of {planned}", r.items_ok, r.items_failed)
                    }
                    _ => format!("{}/{}", r.items_ok, r.items_failed),
                },
            ),
            None => ("never", "-", "-".to_string()),
        };
        // While a run is going, the last run shown is that one: it has no duration yet.
        let took = match (&s.last_run, s.last_duration_ms) {
            (Some(r), _) if r.status == RunStatus::Running => "running".to_string(),
            (_, Some(ms)) => human_duration(ms),
            _ => "-".to_string(),
        };
        let paused = match &s.paused {
            Some(p) => format!(
                "since {}{}",
                p.paused_at,
                p.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            None => "no".into(),
        };
        let running = s
            .running
            .map(|id| format!(" (run #{id} running)"))
            .unwrap_or_default();
        crate::outln!(
            "{:<17} {:<12} {:<25} {:>9} {:>14} {:>9}  {next:<17} {paused}{running}",
            s.job,
            status,
            started,
            took,
            items,
            s.consecutive_failures
        );
    }
    // Why a last run failed: the table has no room for it.
    let failures: Vec<String> = states
        .iter()
        .filter_map(|s| {
            let r = s
                .last_run
                .as_ref()
                .filter(|r| r.status == RunStatus::Failed)?;
            Some(format!(
                "{} run #{} failed: {}",
                s.job,
                r.id,
                r.error.as_ref()?
            ))
        })
        .collect();
    if !failures.is_empty() {
        crate::outln!();
        for f in failures {
            crate::outln!("{f}");
        }
    }
    let list = |v: &[(String, i64)]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    crate::outln!();
    crate::outln!("invoices:  {}", list(&invoices));
    crate::outln!(
        "payments:  {}{}",
        list(&payments),
        newly_paid
            .map(|(job, run, n)| format!(" ({n} newly paid by {job} run #{run})"))
            .unwrap_or_default()
    );
    crate::outln!("pdfs:      {}", list(&pdfs));
    crate::outln!(
        "queue:     {}{}",
        list(&queue),
        oldest
            .map(|o| format!("; oldest pending since {o}"))
            .unwrap_or_default()
    );
    if !blocked.is_empty() {
        crate::outln!(
            "           {} item(s) wait for a failed item (`crm-jobs sync-queue --retry-failed` sends it again):",
            blocked.len()
        );
        for b in blocked.iter().take(10) {
            crate::outln!(
                "           #{} ({} {}) waits for {}, item #{} failed: {}",
                b.id,
                b.entity,
                b.record_id,
                b.waiting_for,
                b.failed_item,
                b.error.as_deref().unwrap_or("no message")
            );
        }
        if blocked.len() > 10 {
            crate::outln!(
                "           and {} more (`crm-jobs export queue` has them all)",
                blocked.len() - 10
            );
        }
    }
    if let Some(until) = crm_pause {
        crate::outln!(
            "crm:       paused by a 429 until {} (every sync-queue process waits)",
            until
                .with_timezone(&chrono_tz::America::Sao_Paulo)
                .format("%Y-%m-%d %H:%M:%S")
        );
    }
    crate::outln!("emails:    {}", list(&emails));
    crate::outln!(
        "boletos missing for {:02}/{}: {}",
        today.month(),
        today.year(),
        list(&boletos)
    );
    Ok(Code::Success)
}
