//! `crm-jobs fetch-invoices`: picks contracts with unpaid, available invoices (least recently
//! tried first), asks the Nio API once per CPF, matches by due date, records amounts, PIX,
//! barcodes and PDFs with the tracking of every attempt, then gives this run's transient
//! failures one more pass.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;

use super::Ctx;
use crate::exit::{Code, CodedError};
use crate::fetching::Engine;
use crate::job::Job;
use crate::lifecycle::JobRun;
use crate::nio::NioClient;
use crate::store::FetchSelection;

/// Arguments of `fetch-invoices`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Contracts to take in this run (default `[fetch] limit`, 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Take every due contract: no limit.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Only contracts of this safra (installation month).
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_safra)]
    pub safra: Option<String>,
    /// Only this contract (by its number).
    #[arg(long, value_name = "NUMBER")]
    pub contract: Option<String>,
    /// Origin recorded on the run and each invoice (default: individual with --contract, safra
    /// with --safra, automatic without a terminal, else manual).
    #[arg(long, value_enum)]
    pub origin: Option<Origin>,
    /// Customers queried at once, 1 to 64 (default `[nio] concurrency`, 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: Option<u32>,
    /// List the contracts and invoices this run would look up, and stop: no request, no write.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the final pass over this run's transient failures.
    #[arg(long)]
    pub no_retry: bool,
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Origin {
    Manual,
    Automatic,
    Safra,
    Individual,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Manual => "manual",
            Origin::Automatic => "automatic",
            Origin::Safra => "safra",
            Origin::Individual => "individual",
        }
    }
}

/// A safra is a month, `YYYY-MM`.
pub fn parse_safra(text: &str) -> Result<String, String> {
    match chrono::NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d") {
        Ok(_) if text.len() == 7 => Ok(text.to_string()),
        _ => Err("expected a month as YYYY-MM, e.g. 2025-03".into()),
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    let origin = args.origin.unwrap_or(if args.contract.is_some() {
        Origin::Individual
    } else if args.safra.is_some() {
        Origin::Safra
    } else if std::io::stdin().is_terminal() {
        Origin::Manual
    } else {
        Origin::Automatic
    });
    let selection = FetchSelection {
        today: ctx.clock.today(),
        limit: if args.all {
            None
        } else {
            Some(args.limit.unwrap_or(cfg.fetch.limit))
        },
        safra: args.safra.as_deref(),
        contract: args.contract.as_deref(),
    };
    if args.dry_run {
        return dry_run(ctx, &selection);
    }
    let passphrase = ctx.nio_passphrase()?;
    ctx.require_nio_base_url()?;
    if let Some(c) = &args.contract
        && !ctx.open_store()?.contract_exists(c)?
    {
        return Err(CodedError {
            code: Code::Usage,
            message: format!(
                "contract `{c}` is not in the store: import it with `crm-jobs import contracts FILE.csv`"
            ),
        }
        .into());
    }
    let mut run = ctx.start_run(
        Job::FetchInvoices,
        "invoices",
        origin.as_str(),
        args.safra.as_deref(),
    )?;
    let downloads = ctx.downloads_dir()?;
    crate::fetching::remove_partial_pdfs(&downloads);
    let work = run.store.contracts_to_fetch(&selection)?;
    if work.is_empty() {
        return run.finish(
            &ctx.printer,
            None,
            "no contract has an unpaid invoice available yet",
        );
    }
    let client = match NioClient::new(&cfg.nio, &passphrase, run.store.nio_session()?) {
        Ok(c) => Arc::new(c),
        Err(e) => return run.finish(&ctx.printer, Some(e), "nothing done"),
    };
    let mut engine = Engine {
        client: client.clone(),
        printer: ctx.printer,
        downloads,
        pdfs: cfg.nio.pdf_url_template.is_some(),
        concurrency: args.concurrency.unwrap_or(cfg.nio.concurrency) as usize,
        origin: origin.as_str().to_string(),
        max_attempts: cfg.retry.max_attempts,
        clock: ctx.clock,
    };
    let mut stop = None;
    match engine.pass(&mut run, work, false).await {
        Ok(end) if end.transient_failures > 0 && !args.no_retry && !run.cancel.is_cancelled() => {
            let wait = Duration::from_millis(cfg.nio.retry_backoff_ms.max(100) * 2);
            tracing::info!(
                "{} contract(s) failed transiently; one more pass in {:.1}s",
                end.transient_failures,
                wait.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = run.cancel.cancelled() => {}
            }
            let again = run.store.contracts_to_retry(
                ctx.clock.today(),
                cfg.retry.max_attempts,
                Some(run.run_id),
            )?;
            if !again.is_empty() && !run.cancel.is_cancelled() {
                engine.origin = "retry".into();
                if let Err(e) = engine.pass(&mut run, again, true).await {
                    stop = Some(e);
                }
            }
        }
        Ok(_) => {}
        Err(e) => stop = Some(e),
    }
    if let Some(cache) = client.cache().await {
        run.store.save_nio_session(&cache)?;
    }
    run.add("requests", client.requests() as i64);
    let detail = summary(&run);
    run.finish(&ctx.printer, stop, &detail)
}

/// The one-line summary of an invoice run.
pub fn summary(run: &JobRun) -> String {
    let n = |k: &str| run.counters.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let mut parts = vec![format!(
        "{} contract(s): {} ok, {} failed, {} skipped",
        run.counts.total, run.counts.ok, run.counts.failed, run.counts.skipped
    )];
    let outcomes: Vec<String> = [
        "matched",
        "no_match",
        "ambiguous",
        "value_mismatch",
        "no_due_date",
    ]
    .iter()
    .filter(|k| n(k) > 0)
    .map(|k| format!("{} {k}", n(k)))
    .collect();
    if !outcomes.is_empty() {
        parts.push(format!("invoices: {}", outcomes.join(", ")));
    }
    for (key, label) in [
        ("paid", "newly paid"),
        ("not_available", "not available yet"),
        ("pdfs_saved", "PDF(s) saved"),
        ("pdf_errors", "PDF(s) not saved"),
        ("problems", "invoice problem(s)"),
        ("retried", "retried"),
        ("recovered", "recovered on retry"),
        ("gave_up", "gave up"),
        ("pdf_gave_up", "PDF(s) gave up"),
    ] {
        if n(key) > 0 {
            parts.push(format!("{} {label}", n(key)));
        }
    }
    parts.join("; ")
}

fn dry_run(ctx: &Ctx, selection: &FetchSelection) -> Result<Code> {
    let path = ctx.store_path()?;
    if !path.exists() {
        ctx.printer.say(&format!(
            "dry run: there is no store at `{}` yet: import contracts first",
            path.display()
        ));
        return Ok(Code::Success);
    }
    let store = ctx.open_store_for_reading()?;
    let work = store.contracts_to_fetch(selection)?;
    let mut rows = Vec::new();
    for w in &work {
        let numbers: Vec<String> = w.invoices.iter().map(|i| i.number.to_string()).collect();
        let cpf = crate::domain::cpf::Cpf::parse(&w.cpf)
            .map(|c| c.masked())
            .unwrap_or_else(|e| format!("invalid: {e}"));
        if ctx.printer.json {
            rows.push(serde_json::json!({
                "contract": w.contract_number, "cpf": cpf, "safra": w.safra,
                "invoices": w.invoices.iter().map(|i| i.number).collect::<Vec<_>>(),
                "not_available": w.not_available,
            }));
        } else {
            crate::outln!(
                "{}\t{}\t{}\tinvoices {}\t({} not available yet)",
                w.contract_number,
                cpf,
                w.safra,
                numbers.join(","),
                w.not_available
            );
        }
    }
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::Value::Array(rows));
    }
    ctx.printer.say(&format!(
        "dry run: {} contract(s) would be looked up; nothing was sent or written",
        work.len()
    ));
    Ok(Code::Success)
}
