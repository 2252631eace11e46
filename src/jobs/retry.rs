//! `crm-jobs retry`: re-attempts invoices whose last lookup, or whose PDF, failed transiently
//! while they are below the attempt limit; at the limit they (or the PDF alone) become
//! `gave_up`, stored and visible, and are not tried again until `--reset CONTRACT` or
//! `--all-gave-up`.

use std::sync::Arc;

use anyhow::Result;

use super::Ctx;
use crate::exit::Code;
use crate::fetching::Engine;
use crate::job::Job;
use crate::nio::NioClient;

/// Arguments of `retry`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Failed attempts after which an invoice is given up (default `[retry] max_attempts`, 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Customers queried at once, 1 to 64 (default `[nio] concurrency`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: Option<u32>,
    /// Make the given-up invoices and PDFs of this contract eligible again, and stop.
    #[arg(long, value_name = "CONTRACT", conflicts_with = "all_gave_up")]
    pub reset: Option<String>,
    /// Make every given-up invoice and PDF eligible again, and stop.
    #[arg(long)]
    pub all_gave_up: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    let max_attempts = args.max_attempts.unwrap_or(cfg.retry.max_attempts);
    if args.reset.is_some() || args.all_gave_up {
        let mut store = ctx.open_store()?;
        if let Some(c) = &args.reset
            && !store.contract_exists(c)?
        {
            return Err(crate::exit::CodedError {
                code: Code::Usage,
                message: format!("contract `{c}` is not in the store"),
            }
            .into());
        }
        let n = store.reset_gave_up(args.reset.as_deref())?;
        if ctx.printer.json {
            ctx.printer.json_out(&serde_json::json!({"reset": n}));
        }
        ctx.printer.say(&format!(
            "{n} given-up invoice(s) reset: the next `fetch-invoices` or `retry` takes them again"
        ));
        return Ok(Code::Success);
    }
    let passphrase = ctx.nio_passphrase()?;
    ctx.require_nio_base_url()?;
    let mut run = ctx.start_run(Job::Retry, "invoices", "retry", None)?;
    let downloads = ctx.downloads_dir()?;
    crate::fetching::remove_partial_pdfs(&downloads);
    let (gave_up, pdfs_gave_up) = run.store.give_up_exhausted(max_attempts)?;
    if gave_up > 0 {
        tracing::warn!(
            "{gave_up} invoice(s) reached {max_attempts} failed attempts and are now `gave_up`; `crm-jobs retry --reset CONTRACT` makes them eligible again"
        );
        run.add("gave_up", gave_up as i64);
        run.event(
            "warn",
            format!("{gave_up} invoice(s) gave up at the attempt limit"),
        );
    }
    if pdfs_gave_up > 0 {
        tracing::warn!(
            "{pdfs_gave_up} PDF(s) reached {max_attempts} failed attempts and are now `gave_up` (their invoices are still tracked); `crm-jobs retry --reset CONTRACT` makes them eligible again"
        );
        run.add("pdf_gave_up", pdfs_gave_up as i64);
        run.event(
            "warn",
            format!("{pdfs_gave_up} PDF(s) gave up at the attempt limit"),
        );
    }
    let work = run
        .store
        .contracts_to_retry(ctx.clock.today(), max_attempts, None)?;
    if work.is_empty() {
        let detail = super::fetch_invoices::summary(&run);
        return run.finish(&ctx.printer, None, &format!("nothing to retry; {detail}"));
    }
    let client = match NioClient::new(&cfg.nio, &passphrase, run.store.nio_session()?) {
        Ok(c) => Arc::new(c),
        Err(e) => return run.finish(&ctx.printer, Some(e), "nothing done"),
    };
    let engine = Engine {
        client: client.clone(),
        printer: ctx.printer,
        downloads,
        pdfs: cfg.nio.pdf_url_template.is_some(),
        concurrency: args.concurrency.unwrap_or(cfg.nio.concurrency) as usize,
        origin: "retry".into(),
        max_attempts,
        clock: ctx.clock,
    };
    let stop = engine.pass(&mut run, work, false).await.err();
    if let Some(cache) = client.cache().await {
        run.store.save_nio_session(&cache)?;
    }
    run.add("requests", client.requests() as i64);
    let detail = super::fetch_invoices::summary(&run);
    run.finish(&ctx.printer, stop, &detail)
}
