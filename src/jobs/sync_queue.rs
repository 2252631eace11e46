//! `crm-jobs sync-queue`: drains the CRM outbox. Items are claimed atomically (priority, then
//! age; only those due), references are translated to CRM ids (an item whose references are not
//! synced yet waits for them), requests go out within the rate limit shared by every process
//! (kept in the store), and every attempt is logged. Transient failures back off exponentially
//! up to the attempt limit; 4xx fail at once with the CRM's message; 401/403 stop the run and
//! leave the items untouched; 429 pauses everyone as told. An item in flight when a process died
//! is resent, at the next start, with the same idempotency key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::clock;
use crate::crm::{self, CrmClient, CrmError, Reference, Request};
use crate::exit::{Code, CodedError};
use crate::lifecycle::JobRun;
use crate::store::{QueueItem, RequestLog};

/// The shared rate limit's name in the store.
const BUCKET: &str = "crm";

/// Arguments of `sync-queue`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Items to send in this run (default `[sync] batch`, 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Transient failures after which an item is `failed` (default `[sync] max_attempts`, 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Requests in flight at once (default `[crm] concurrency`, 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: Option<u32>,
    /// List the items this run would send, and stop: no request, no write.
    #[arg(long)]
    pub dry_run: bool,
}

/// A request that came back: what was sent, the answer, its duration in ms, when it left.
type Sent = (Prepared, Result<crm::Answer, CrmError>, i64, String);

/// What is sent for an item.
struct Prepared {
    item: QueueItem,
    action: String,
    request: Request,
}

enum Prepare {
    Send(Box<Prepared>),
    /// Nothing to send (a delete of a record the CRM never had).
    Done(&'static str),
    Defer(String),
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    let batch = args.batch.unwrap_or(cfg.sync.batch);
    let max_attempts = args.max_attempts.unwrap_or(cfg.sync.max_attempts);
    let concurrency = args.concurrency.unwrap_or(cfg.crm.concurrency) as usize;
    if args.dry_run {
        let store = ctx.open_store()?;
        let rows = store.export_queue(Some("pending"))?;
        let now = clock::to_store(ctx.clock.now());
        let due: Vec<_> = rows
            .iter()
            .filter(|r| r.due_at.as_deref().is_none_or(|d| d <= now.as_str()))
            .collect();
        for r in due.iter().take(batch as usize) {
            println!("{}\t{}\t{}\t{}", r.id, r.entity, r.record_id, r.action);
        }
        ctx.printer.say(&format!(
            "dry run: {} item(s) due, {} would be sent by this run (before superseding and priorities); nothing was sent or written",
            due.len(),
            due.len().min(batch as usize)
        ));
        return Ok(Code::Success);
    }
    let base = cfg.crm.base_url.clone().ok_or_else(|| {
        CodedError::config("`[crm] base_url` is not set: set it in the config file or `CRM_JOBS_CRM_BASE_URL` (the real API is https://api.beteltecnologia.com)")
    })?;
    let secret = |env: &str, file: Option<&std::path::Path>| -> Result<String> {
        crate::config::secret(env, file)?.ok_or_else(|| {
            CodedError::config(format!("the CRM credential `{env}` is not set: export it, or point `[crm] {}` to a file holding it", if env.contains("SECRET") { "secret_token_file" } else { "access_token_file" }))
        })
    };
    let access = secret(
        "CRM_JOBS_CRM_ACCESS_TOKEN",
        cfg.crm.access_token_file.as_deref(),
    )?;
    let secret_token = secret(
        "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
        cfg.crm.secret_token_file.as_deref(),
    )?;
    let client = Arc::new(CrmClient::new(&cfg.crm, &base, &access, &secret_token)?);
    let references: HashMap<String, Vec<Reference>> = cfg
        .crm
        .references
        .iter()
        .map(|(e, refs)| {
            (
                e.clone(),
                refs.iter().filter_map(|r| Reference::parse(r)).collect(),
            )
        })
        .collect();

    let origin = crate::lifecycle::default_origin();
    let mut run = JobRun::start(
        &ctx.store_path()?,
        ctx.clock,
        "sync-queue",
        "queue",
        origin,
        None,
    )?;
    let now = clock::to_store(ctx.clock.now());
    let recovered = run.store.recover_in_flight(&now)?;
    if !recovered.is_empty() {
        let m = format!(
            "{} item(s) were in flight when a process died (unknown outcome): resent with the same idempotency key",
            recovered.len()
        );
        tracing::warn!("{m}");
        run.event("warn", m);
        run.add("unknown_outcome", recovered.len() as i64);
    }
    let priorities: Vec<(String, i64)> = cfg
        .sync
        .priorities
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    run.store.set_priorities(&priorities)?;
    let (superseded, cancelled) = run.store.supersede(&now)?;
    run.add("superseded", superseded as i64);
    run.add("cancelled", cancelled as i64);

    let bar = ctx.printer.progress(u64::from(batch), "sync");
    let mut last_pause_check = Instant::now() - Duration::from_secs(1);
    let mut last_limited = 0;
    let mut paused: Option<u64> = None;
    let mut budget = batch;
    let mut stop: Option<String> = None;
    let mut inflight: tokio::task::JoinSet<Sent> = tokio::task::JoinSet::new();
    'rounds: while budget > 0 && stop.is_none() && paused.is_none() && !run.cancel.is_cancelled() {
        let now = clock::to_store(ctx.clock.now());
        // Small claims keep the pipeline full without holding many items `processing`.
        let items = run.store.claim(run.run_id, &now, budget.min(64))?;
        if items.is_empty() {
            if inflight.is_empty() {
                break;
            }
            // Answers still out may wake items waiting for a reference: take them, claim again.
            while let Some(done) = inflight.join_next().await {
                handle(&mut run, ctx, done?, max_attempts, &mut stop, &bar)?;
            }
            continue;
        }
        let mut queue = std::collections::VecDeque::from(items);
        while let Some(item) = queue.pop_front() {
            if stop.is_some() || run.cancel.is_cancelled() {
                let mut rest: Vec<i64> = queue.iter().map(|i| i.id).collect();
                rest.push(item.id);
                run.store
                    .release(&rest, &clock::to_store(ctx.clock.now()))?;
                break 'rounds;
            }
            let now = clock::to_store(ctx.clock.now());
            let prepared = match prepare(&run, &cfg.crm.resources, &references, item.clone()) {
                Err(e) => {
                    // A row the tool cannot send (unknown entity, payload not JSON) fails alone;
                    // the rest of the queue goes on.
                    let m = format!("{e:#}");
                    run.store.record_failed(item.id, None, &m, &now)?;
                    run.add("failed", 1);
                    run.counts.total += 1;
                    run.counts.failed += 1;
                    tracing::warn!("{m}");
                    continue;
                }
                Ok(p) => p,
            };
            let prepared = match prepared {
                Prepare::Defer(waiting) => {
                    let due = clock::to_store(
                        ctx.clock.now() + chrono::Duration::seconds(cfg.sync.defer_secs as i64),
                    );
                    run.store.defer(item.id, &waiting, &due, &now)?;
                    run.store.log_request(
                        item.id,
                        run.run_id,
                        &now,
                        "deferred",
                        None,
                        0,
                        Some(&format!("waiting for {waiting}")),
                    )?;
                    run.add("deferred", 1);
                    run.counts.skipped += 1;
                    continue;
                }
                Prepare::Done(note) => {
                    let log = RequestLog {
                        run_id: run.run_id,
                        at: &now,
                        request: "none",
                        status: None,
                        duration_ms: 0,
                        error: Some(note),
                    };
                    run.store.record_done(&item, "delete", None, &now, &log)?;
                    run.add("done", 1);
                    run.counts.total += 1;
                    run.counts.ok += 1;
                    budget = budget.saturating_sub(1);
                    continue;
                }
                Prepare::Send(p) => p,
            };
            while inflight.len() >= concurrency {
                if let Some(done) = inflight.join_next().await {
                    handle(&mut run, ctx, done?, max_attempts, &mut stop, &bar)?;
                }
            }
            // The shared rate limit, and any pause a 429 asked for. Without a limit of our own
            // the shared pause is looked at after our own 429s and every 200 ms, not before
            // every request.
            let unlimited = cfg.crm.rate_limit_per_minute == 0;
            let limited_now = run
                .counters
                .get("rate_limited")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if !unlimited
                || limited_now != last_limited
                || last_pause_check.elapsed() >= Duration::from_millis(200)
            {
                last_pause_check = Instant::now();
                last_limited = limited_now;
                loop {
                    let wait =
                        run.store
                            .rate_acquire(BUCKET, cfg.crm.rate_limit_per_minute, real_ms())?;
                    if wait == 0 {
                        break;
                    }
                    if Duration::from_millis(wait)
                        > Duration::from_secs(cfg.sync.max_retry_after_secs)
                    {
                        // Not a failure: the CRM asked everyone to wait; the next run goes on.
                        paused = Some(wait / 1000);
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = run.cancel.cancelled() => break,
                    }
                }
                if stop.is_some() || paused.is_some() || run.cancel.is_cancelled() {
                    let mut rest: Vec<i64> = queue.iter().map(|i| i.id).collect();
                    rest.push(prepared.item.id);
                    run.store
                        .release(&rest, &clock::to_store(ctx.clock.now()))?;
                    break 'rounds;
                }
            }
            budget = budget.saturating_sub(1);
            let client = client.clone();
            let clock_now = ctx.clock;
            inflight.spawn(async move {
                let at = clock::to_store(clock_now.now());
                let started = Instant::now();
                let result = client.send(&prepared.request).await;
                (*prepared, result, started.elapsed().as_millis() as i64, at)
            });
        }
    }
    while let Some(done) = inflight.join_next().await {
        handle(&mut run, ctx, done?, max_attempts, &mut stop, &bar)?;
    }
    ctx.printer.finish_progress(&bar);
    let n = |k: &str| run.counters.get(k).and_then(Value::as_i64).unwrap_or(0);
    let mut detail = format!(
        "{} sent: {} done, {} failed, {} to retry; {} deferred, {} rate-limited",
        run.counts.total,
        n("done"),
        n("failed"),
        n("retry"),
        n("deferred"),
        n("rate_limited")
    );
    if n("superseded") + n("cancelled") > 0 {
        detail.push_str(&format!(
            "; {} superseded, {} cancelled out",
            n("superseded"),
            n("cancelled")
        ));
    }
    if let Some(secs) = paused {
        let m = format!(
            "the CRM asked to wait {secs}s (more than `[sync] max_retry_after_secs`): this run stopped sending; the items wait, untouched"
        );
        tracing::warn!("{m}");
        run.event("warn", m);
        detail.push_str(&format!("; paused by the CRM for {secs}s"));
    }
    let depth: i64 = run
        .store
        .queue_counts()?
        .iter()
        .filter(|(s, _)| s == "pending")
        .map(|(_, c)| c)
        .sum();
    detail.push_str(&format!("; {depth} pending in the queue"));
    run.finish(&ctx.printer, stop.map(|m| anyhow!(m)), &detail)
}

fn real_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The request for an item: the action resolved against the CRM ids known, the references
/// translated.
fn prepare(
    run: &JobRun,
    resources: &std::collections::BTreeMap<String, String>,
    references: &HashMap<String, Vec<Reference>>,
    item: QueueItem,
) -> Result<Prepare> {
    let Some(resource) = resources.get(&item.entity) else {
        return Err(anyhow!(
            "item #{}: entity `{}` has no `[crm.resources]` path",
            item.id,
            item.entity
        ));
    };
    let known = run.store.external_id(&item.entity, &item.record_id)?;
    let action = match (item.action.as_str(), &known) {
        ("delete", None) => {
            return Ok(Prepare::Done(
                "delete of a record the CRM never had: nothing sent",
            ));
        }
        ("upsert" | "update", Some(_)) => "update",
        ("upsert" | "update" | "create", None) => "create",
        ("create", Some(_)) => "update",
        (other, _) => other,
    }
    .to_string();
    let mut payload: Value = serde_json::from_str(&item.payload)
        .map_err(|e| anyhow!("item #{}: the payload is not JSON: {e}", item.id))?;
    if let Some(refs) = references.get(&item.entity) {
        let mut failed = None;
        let result = crm::translate(&mut payload, refs, |entity, erp| {
            match run.store.external_id(entity, erp) {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if let Err((entity, erp)) = result {
            return Ok(Prepare::Defer(format!("{entity}:{erp}")));
        }
    }
    // A CRM id is one path segment whatever it holds (percent-encoded).
    let at = |id: &str| {
        crate::http::path_segment(id)
            .map(|segment| format!("{resource}/{segment}"))
            .ok_or_else(|| anyhow!("item #{}: the CRM id `{id}` is empty or a dot", item.id))
    };
    let (method, path, body) = match (action.as_str(), &known) {
        ("create", _) => (Method::POST, resource.clone(), Some(payload)),
        ("update", Some(id)) => (Method::PUT, at(id)?, Some(payload)),
        ("delete", Some(id)) => (Method::DELETE, at(id)?, None),
        _ => {
            return Err(anyhow!(
                "item #{}: cannot {action} without a CRM id",
                item.id
            ));
        }
    };
    Ok(Prepare::Send(Box::new(Prepared {
        request: Request {
            method,
            path,
            body,
            idempotency_key: item.idempotency_key.clone(),
        },
        action,
        item,
    })))
}

/// Records one answer.
#[allow(clippy::too_many_arguments)]
fn handle(
    run: &mut JobRun,
    ctx: &Ctx,
    (p, result, ms, at_owned): Sent,
    max_attempts: u32,
    stop: &mut Option<String>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let at = at_owned.as_str();
    let now = clock::to_store(ctx.clock.now());
    let item = &p.item;
    let what = format!(
        "item #{} ({} {} {})",
        item.id, p.action, item.entity, item.record_id
    );
    let summary = p.request.summary();
    bar.inc(1);
    match result {
        Ok(answer) => {
            let ext = answer.external_id.clone().or_else(|| {
                // An update or a delete answers the record we named.
                p.request
                    .path
                    .rsplit('/')
                    .next()
                    .filter(|_| p.action != "create")
                    .map(str::to_string)
            });
            let log = RequestLog {
                run_id: run.run_id,
                at,
                request: &summary,
                status: Some(answer.status),
                duration_ms: ms,
                error: None,
            };
            let woken = run
                .store
                .record_done(item, &p.action, ext.as_deref(), &now, &log)?;
            if woken > 0 {
                run.add("woken", woken as i64);
            }
            run.counts.total += 1;
            run.counts.ok += 1;
            run.item_duration(ms);
            run.add("done", 1);
            if ctx.printer.item_lines() {
                tracing::info!("{what}: {summary} -> {} [{ms}ms]", answer.status);
            }
        }
        Err(CrmError::Stop(m)) => {
            run.store
                .log_request(item.id, run.run_id, at, &summary, None, ms, Some(&m))?;
            run.store.release(&[item.id], &now)?;
            if stop.is_none() {
                *stop = Some(m);
            }
        }
        Err(CrmError::RateLimited { retry_after }) => {
            run.store.log_request(
                item.id,
                run.run_id,
                at,
                &summary,
                Some(429),
                ms,
                Some("429 Too Many Requests"),
            )?;
            run.store
                .rate_pause(BUCKET, real_ms() + retry_after.as_millis() as i64)?;
            run.store.release(&[item.id], &now)?;
            run.add("rate_limited", 1);
            run.counts.skipped += 1;
            tracing::warn!(
                "{what}: the CRM answered 429; everyone waits {}s as told, the item goes back to the queue",
                retry_after.as_secs()
            );
        }
        Err(CrmError::Transient { status, message }) => {
            run.store.log_request(
                item.id,
                run.run_id,
                at,
                &summary,
                status,
                ms,
                Some(&message),
            )?;
            let backoff = ctx
                .loaded
                .config
                .sync
                .backoff_secs
                .saturating_mul(1 << item.attempts.min(16));
            let due = clock::to_store(ctx.clock.now() + chrono::Duration::seconds(backoff as i64));
            let failed =
                run.store
                    .record_retry(item.id, status, &message, &due, max_attempts, &now)?;
            run.counts.total += 1;
            run.counts.failed += 1;
            run.item_duration(ms);
            if failed {
                run.add("failed", 1);
                tracing::warn!("{what}: {message}; failed after {max_attempts} attempts");
            } else {
                run.add("retry", 1);
                tracing::warn!(
                    "{what}: {message}; retried after {backoff}s (attempt {} of {max_attempts})",
                    item.attempts + 1
                );
            }
        }
        Err(CrmError::Permanent { status, message }) => {
            run.store.log_request(
                item.id,
                run.run_id,
                at,
                &summary,
                Some(status),
                ms,
                Some(&message),
            )?;
            run.store
                .record_failed(item.id, Some(status), &message, &now)?;
            run.counts.total += 1;
            run.counts.failed += 1;
            run.item_duration(ms);
            run.add("failed", 1);
            tracing::warn!("{what}: {message}");
        }
    }
    Ok(())
}
