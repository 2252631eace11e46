//! `crm-jobs sync-queue`: drains the CRM outbox. Items are claimed atomically (priority, then
//! age; only those due), references are translated to CRM ids (an item whose references are not
//! synced yet waits for them, and is claimed again in priority order as soon as they are),
//! requests go out within the rate limit shared by every process (kept in the store), and every
//! attempt is logged. Transient failures back off exponentially up to the attempt limit; 4xx
//! fail at once with the CRM's message; 401/403 stop the run and leave the items untouched; a
//! 429 pauses everyone once, from its arrival, for at most `[sync] max_retry_after_secs`.
//!
//! A create whose first outcome is unknown (its process died with the request in flight, or the
//! CRM answered a fault that may have come after the commit) is looked up by its natural key
//! before it is sent again, and the record found is adopted: no duplicate even where the CRM
//! ignores `Idempotency-Key`. Without a natural key it is sent again with the same key and stays
//! `unknown_outcome`, for an operator. `--retry-failed` sends failed items again, each with its
//! own key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::clock;
use crate::crm::{self, CrmClient, CrmError, NaturalKey, Reference, Request};
use crate::exit::{Code, CodedError};
use crate::job::Job;
use crate::lifecycle::JobRun;
use crate::store::{QueueItem, QueueStatus, RequestLog};

/// The shared rate limit's name in the store.
const BUCKET: &str = "crm";

/// Items claimed at once: small rounds keep the pipeline full without holding many items
/// `processing`.
const ROUND: u32 = 64;

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
    #[arg(long, conflicts_with = "retry_failed")]
    pub dry_run: bool,
    /// Send the `failed` items again (all, or those of `--id`), each with its own idempotency
    /// key and no attempt counted; a create whose outcome is unknown is looked up first.
    #[arg(long)]
    pub retry_failed: bool,
    /// With `--retry-failed`: only this item (repeat for more).
    #[arg(long = "id", value_name = "N", requires = "retry_failed")]
    pub ids: Vec<i64>,
}

/// What is sent for an item.
struct Prepared {
    item: QueueItem,
    /// `create`, `update`, `delete`, or `lookup` (a create's unknown outcome looked into).
    action: String,
    request: Request,
    /// For a lookup: what to send once the CRM said whether it has the record.
    lookup: Option<Box<Lookup>>,
    /// The second request of an item (after its lookup): sent before anything new.
    follow_up: bool,
}

/// A create whose outcome is unknown, looked up by its natural key.
struct Lookup {
    key: NaturalKey,
    value: String,
    resource: String,
    payload: Value,
}

/// A request that came back.
struct Sent {
    p: Prepared,
    result: Result<crm::Answer, CrmError>,
    ms: i64,
    /// When it left, on the job's clock (for the log).
    at: String,
    /// When it left and when its answer arrived, on the real clock (for the pause).
    sent_ms: i64,
    arrived_ms: i64,
}

enum Prepare {
    Send(Box<Prepared>),
    /// Nothing to send (a delete of a record the CRM never had).
    Done(&'static str),
    Defer(String),
}

/// What the drain does next.
enum Next {
    Send(Box<Prepared>),
    /// An item was settled without a request: look again.
    Again,
    /// Nothing to send now: wait for an answer (or end when none is out).
    Wait,
}

/// The configuration a drain works with.
struct Settings {
    resources: BTreeMap<String, String>,
    references: HashMap<String, Vec<Reference>>,
    natural_keys: HashMap<String, NaturalKey>,
    list_pointer: String,
    list_id_pointer: String,
    max_attempts: u32,
    backoff_secs: u64,
    defer_secs: u64,
    max_pause_secs: u64,
    per_minute: u32,
    concurrency: usize,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    let batch = args.batch.unwrap_or(cfg.sync.batch);
    if args.dry_run {
        let store = ctx.open_store_for_reading()?;
        let now = clock::to_store(ctx.clock.now());
        let mut due = 0usize;
        store.export_queue(Some(QueueStatus::Pending), &mut |r| {
            if r.due_at.as_deref().is_none_or(|d| d <= now.as_str()) {
                if due < batch as usize {
                    crate::outln!("{}\t{}\t{}\t{}", r.id, r.entity, r.record_id, r.action);
                }
                due += 1;
            }
            Ok(())
        })?;
        ctx.printer.say(&format!(
            "dry run: {due} item(s) due, {} would be sent by this run (before superseding and priorities); nothing was sent or written",
            due.min(batch as usize)
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
    if !args.ids.is_empty() {
        check_failed(ctx, &args.ids)?;
    }
    let client = Arc::new(CrmClient::new(&cfg.crm, &base, &access, &secret_token)?);
    let settings = Settings {
        resources: cfg.crm.resources.clone(),
        references: cfg
            .crm
            .references
            .iter()
            .map(|(e, refs)| {
                (
                    e.clone(),
                    refs.iter().filter_map(|r| Reference::parse(r)).collect(),
                )
            })
            .collect(),
        natural_keys: cfg
            .crm
            .natural_keys
            .iter()
            .filter_map(|(e, k)| Some((e.clone(), NaturalKey::parse(k)?)))
            .collect(),
        list_pointer: cfg.crm.list_pointer.clone(),
        list_id_pointer: cfg.crm.list_id_pointer.clone(),
        max_attempts: args.max_attempts.unwrap_or(cfg.sync.max_attempts),
        backoff_secs: cfg.sync.backoff_secs,
        defer_secs: cfg.sync.defer_secs,
        max_pause_secs: cfg.sync.max_retry_after_secs,
        per_minute: cfg.crm.rate_limit_per_minute,
        concurrency: args.concurrency.unwrap_or(cfg.crm.concurrency) as usize,
    };

    let origin = crate::lifecycle::default_origin();
    let mut run = ctx.start_run(Job::SyncQueue, "queue", origin, None)?;
    let now = clock::to_store(ctx.clock.now());
    let recovered = run.store.recover_in_flight(&now)?;
    if !recovered.unknown.is_empty() {
        let m = format!(
            "{} item(s) were in flight when a process died (unknown outcome): resent with the same idempotency key, a create first looked up at the CRM by its natural key",
            recovered.unknown.len()
        );
        tracing::warn!("{m}");
        run.event("warn", m);
        run.add("unknown_outcome", recovered.unknown.len() as i64);
    }
    if recovered.untouched > 0 {
        tracing::info!(
            "{} item(s) claimed by a process that died before sending them: back in the queue, untouched",
            recovered.untouched
        );
    }
    // The ERP's own rows may name entities in the singular.
    let renames: Vec<(String, String)> = run
        .store
        .pending_entities()?
        .into_iter()
        .filter(|e| !settings.resources.contains_key(e))
        .filter_map(|e| {
            let to = crm::canonical_entity(&e, &settings.resources)?.to_string();
            Some((e, to))
        })
        .collect();
    run.store.rename_pending_entities(&renames)?;
    if args.retry_failed {
        let ids = (!args.ids.is_empty()).then_some(args.ids.as_slice());
        let retried = run.store.retry_failed(ids, &now)?;
        for (id, newer) in &retried.stale {
            let m = format!(
                "item #{id}: not sent again: item #{newer}, a newer change of its record, was sent since (sending #{id} would undo it)"
            );
            tracing::warn!("{m}");
            run.event("warn", m);
        }
        tracing::info!(
            "{} failed item(s) sent again, each with its own idempotency key",
            retried.requeued.len()
        );
        run.add("retried", retried.requeued.len() as i64);
        if !retried.stale.is_empty() {
            run.add("not_retried", retried.stale.len() as i64);
        }
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
    let mut drain = Drain {
        ctx,
        s: settings,
        client,
        inflight: tokio::task::JoinSet::new(),
        ready: VecDeque::new(),
        claimed: VecDeque::new(),
        budget: batch,
        stop: None,
        too_long: None,
        reclaim: false,
        pause_until: 0,
        last_pause_check: Instant::now() - Duration::from_secs(1),
        bar,
        run,
    };
    drain.drain().await?;
    let Drain {
        mut run,
        mut stop,
        too_long,
        bar,
        s,
        ..
    } = drain;
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
    if n("adopted") > 0 {
        detail.push_str(&format!(
            "; {} found at the CRM by their natural key",
            n("adopted")
        ));
    }
    // The drain stops only on refused credentials: a configuration failure (exit 78).
    let refused = stop.is_some();
    // A run that could send nothing because the CRM kept it waiting says so: it fails, so that
    // `status`, the failure streak and the alerts show it.
    let sent_nothing = n("done") == 0 && run.counts.failed == 0 && stop.is_none();
    if let Some(secs) = too_long {
        let m = format!(
            "the CRM asked to wait {secs}s (more than `[sync] max_retry_after_secs` = {}s): this run stopped sending; the items wait, untouched, and every process waits {}s",
            s.max_pause_secs, s.max_pause_secs
        );
        if sent_nothing {
            stop = Some(format!("nothing was sent: {m}; the next run tries again"));
        } else {
            tracing::warn!("{m}");
            run.event("warn", m);
            detail.push_str(&format!("; paused by the CRM for {secs}s"));
        }
    } else if sent_nothing && n("rate_limited") > 0 {
        stop = Some(format!(
            "nothing was sent: every request of this run ({}) was answered 429 Too Many Requests; the items wait, untouched",
            n("rate_limited")
        ));
    }
    let depth: i64 = run
        .store
        .queue_counts()?
        .iter()
        .filter(|(s, _)| QueueStatus::Pending == s.as_str())
        .map(|(_, c)| c)
        .sum();
    detail.push_str(&format!("; {depth} pending in the queue"));
    // Refused credentials are a configuration failure (exit 78), as for renew.
    let stop = stop.map(|m| {
        if refused {
            CodedError::config(m)
        } else {
            anyhow!(m)
        }
    });
    run.finish(&ctx.printer, stop, &detail)
}

/// `--id N`: each must be a failed item; anything else is a bad command line, and nothing is
/// changed.
fn check_failed(ctx: &Ctx, ids: &[i64]) -> Result<()> {
    let store = ctx.open_store()?;
    for (id, status) in store.item_statuses(ids)? {
        let problem = match status {
            Some(QueueStatus::Failed) => continue,
            Some(other) => format!(
                "item #{id} is `{other}`, not `failed`: `--retry-failed` sends failed items only"
            ),
            None => format!("there is no item #{id} in the queue"),
        };
        return Err(CodedError {
            code: Code::Usage,
            message: format!("{problem}; nothing was changed"),
        }
        .into());
    }
    Ok(())
}

fn real_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One run's drain of the queue.
struct Drain<'a> {
    ctx: &'a Ctx,
    run: JobRun,
    s: Settings,
    client: Arc<CrmClient>,
    inflight: tokio::task::JoinSet<Sent>,
    /// Second requests of items already claimed (after a lookup), sent before anything new.
    ready: VecDeque<Prepared>,
    /// Items claimed and not yet looked at.
    claimed: VecDeque<QueueItem>,
    /// Items this run may still send.
    budget: u32,
    /// Why the run stopped (credentials refused).
    stop: Option<String>,
    /// A 429 asked for more than `[sync] max_retry_after_secs` (seconds asked).
    too_long: Option<u64>,
    /// Items woke since the last claim: claim again, so that they go out in priority order.
    reclaim: bool,
    /// The end of the pause in force, as last known (Unix ms, real clock).
    pause_until: i64,
    last_pause_check: Instant,
    bar: indicatif::ProgressBar,
}

impl Drain<'_> {
    fn halted(&self) -> bool {
        self.stop.is_some() || self.too_long.is_some() || self.run.cancel.is_cancelled()
    }

    fn now(&self) -> String {
        clock::to_store(self.ctx.clock.now())
    }

    async fn drain(&mut self) -> Result<()> {
        loop {
            // Answers are taken as soon as they are back: a 429 pauses at once, a synced
            // record wakes its waiters at once.
            while let Some(done) = self.inflight.try_join_next() {
                self.handle(done?)?;
            }
            if self.halted() {
                break;
            }
            if self.reclaim {
                self.give_back_claimed()?;
                self.reclaim = false;
            }
            if self.inflight.len() >= self.s.concurrency {
                self.wait_answer().await?;
                continue;
            }
            let prepared = match self.next()? {
                Next::Send(p) => p,
                Next::Again => continue,
                Next::Wait if self.inflight.is_empty() => break,
                Next::Wait => {
                    // Answers still out may wake items waiting for a reference.
                    self.wait_answer().await?;
                    continue;
                }
            };
            if self.wait_turn(&prepared).await? {
                self.send(*prepared)?;
            } else if prepared.follow_up {
                self.ready.push_front(*prepared);
            } else {
                self.claimed.push_front(prepared.item);
            }
        }
        while let Some(done) = self.inflight.join_next().await {
            self.handle(done?)?;
        }
        let now = self.now();
        let ready: Vec<i64> = self.ready.drain(..).map(|p| p.item.id).collect();
        self.run.store.release(&ready, &now)?;
        self.give_back_claimed()
    }

    /// Claimed items not sent go back to `pending`, untouched.
    fn give_back_claimed(&mut self) -> Result<()> {
        let ids: Vec<i64> = self.claimed.drain(..).map(|i| i.id).collect();
        if !ids.is_empty() {
            let now = self.now();
            self.run.store.release(&ids, &now)?;
        }
        Ok(())
    }

    async fn wait_answer(&mut self) -> Result<()> {
        if let Some(done) = self.inflight.join_next().await {
            self.handle(done?)?;
        }
        Ok(())
    }

    /// The next request: a second request of an item first, else the next claimed item
    /// (settling inline those that need no request).
    fn next(&mut self) -> Result<Next> {
        if let Some(p) = self.ready.pop_front() {
            return Ok(Next::Send(Box::new(p)));
        }
        if self.claimed.is_empty() {
            if self.budget == 0 {
                return Ok(Next::Wait);
            }
            let now = self.now();
            let run_id = self.run.run_id;
            self.claimed = self
                .run
                .store
                .claim(run_id, &now, self.budget.min(ROUND))?
                .into();
        }
        let Some(item) = self.claimed.pop_front() else {
            return Ok(Next::Wait);
        };
        let now = self.now();
        match self.prepare(item.clone()) {
            Err(e) => {
                // A row the tool cannot send (unknown entity, payload not JSON) fails alone; the
                // rest of the queue goes on.
                let m = format!("{e:#}");
                self.run.store.record_failed(item.id, None, &m, &now)?;
                self.run.add("failed", 1);
                self.run.counts.total += 1;
                self.run.counts.failed += 1;
                tracing::warn!("{m}");
                Ok(Next::Again)
            }
            Ok(Prepare::Defer(waiting)) => {
                let due = clock::to_store(
                    self.ctx.clock.now() + chrono::Duration::seconds(self.s.defer_secs as i64),
                );
                self.run.store.defer(item.id, &waiting, &due, &now)?;
                let run_id = self.run.run_id;
                self.run.store.log_request(
                    item.id,
                    run_id,
                    &now,
                    "deferred",
                    None,
                    0,
                    Some(&format!("waiting for {waiting}")),
                )?;
                self.run.add("deferred", 1);
                self.run.counts.skipped += 1;
                Ok(Next::Again)
            }
            Ok(Prepare::Done(note)) => {
                let log = RequestLog {
                    run_id: self.run.run_id,
                    at: &now,
                    request: "none",
                    status: None,
                    duration_ms: 0,
                    error: Some(note),
                };
                self.run
                    .store
                    .record_done(&item, "delete", None, &now, &log)?;
                self.run.add("done", 1);
                self.run.counts.total += 1;
                self.run.counts.ok += 1;
                self.budget = self.budget.saturating_sub(1);
                Ok(Next::Again)
            }
            Ok(Prepare::Send(p)) => Ok(Next::Send(p)),
        }
    }

    /// Waits for the shared rate limit and any pause a 429 asked for, taking the answers that
    /// come back meanwhile. False when the request must not go now: the run is stopping, or
    /// items woke that may come before this one.
    async fn wait_turn(&mut self, p: &Prepared) -> Result<bool> {
        loop {
            if self.halted() || (self.reclaim && !p.follow_up) {
                return Ok(false);
            }
            let wait = self.turn()?;
            if wait == 0 {
                return Ok(true);
            }
            let answer = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => None,
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => Some(done),
                _ = self.run.cancel.cancelled() => None,
            };
            if let Some(done) = answer {
                self.handle(done?)?;
            }
        }
    }

    /// Milliseconds to wait before the next request (0: go, a token was taken).
    fn turn(&mut self) -> Result<u64> {
        let now = real_ms();
        if self.s.per_minute > 0 {
            return self.run.store.rate_acquire(BUCKET, self.s.per_minute, now);
        }
        // No limit of our own: the pause this process knows, and every 200 ms the one kept in
        // the store (another process's 429), not a store write before every request.
        if self.last_pause_check.elapsed() >= Duration::from_millis(200) {
            self.last_pause_check = Instant::now();
            let wait = self.run.store.rate_acquire(BUCKET, 0, now)?;
            self.pause_until = self.pause_until.max(now + wait as i64);
        }
        Ok((self.pause_until - now).max(0) as u64)
    }

    fn send(&mut self, p: Prepared) -> Result<()> {
        let now = self.now();
        self.run.store.mark_sent(p.item.id, &now)?;
        if !p.follow_up {
            self.budget = self.budget.saturating_sub(1);
        }
        let client = self.client.clone();
        let clock = self.ctx.clock;
        // Taken here, not in the task: a request handed out before a pause began was in flight
        // when it began, however late its task starts.
        let sent_ms = real_ms();
        self.inflight.spawn(async move {
            let at = clock::to_store(clock.now());
            let started = Instant::now();
            let result = client.send(&p.request).await;
            Sent {
                ms: started.elapsed().as_millis() as i64,
                arrived_ms: real_ms(),
                sent_ms,
                at,
                result,
                p,
            }
        });
        Ok(())
    }

    /// The request for an item: the action resolved against the CRM ids known, the references
    /// translated; a lookup first for a create whose outcome is unknown.
    fn prepare(&self, item: QueueItem) -> Result<Prepare> {
        let store = &self.run.store;
        let Some(resource) = self.s.resources.get(&item.entity) else {
            return Err(anyhow!(
                "item #{}: entity `{}` has no `[crm.resources]` path",
                item.id,
                item.entity
            ));
        };
        let known = store.external_id(&item.entity, &item.record_id)?;
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
        if let Some(refs) = self.s.references.get(&item.entity) {
            let mut failed = None;
            let result = crm::translate(&mut payload, refs, |entity, erp| {
                match store.external_id(entity, erp) {
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
        let request = |method: Method, path: String, body: Option<Value>| Request {
            method,
            path,
            query: Vec::new(),
            body,
            idempotency_key: item.idempotency_key.clone(),
        };
        if action == "create"
            && item.unknown_outcome
            && let Some(key) = self.s.natural_keys.get(&item.entity)
            && let Some(value) = key.value(&payload)
        {
            let mut get = request(Method::GET, resource.clone(), None);
            get.query = vec![(key.filter.clone(), value.clone())];
            return Ok(Prepare::Send(Box::new(Prepared {
                request: get,
                action: "lookup".into(),
                lookup: Some(Box::new(Lookup {
                    key: key.clone(),
                    value,
                    resource: resource.clone(),
                    payload,
                })),
                follow_up: false,
                item,
            })));
        }
        // A CRM id is one path segment whatever it holds (percent-encoded).
        let at = |id: &str| {
            crate::http::path_segment(id)
                .map(|segment| format!("{resource}/{segment}"))
                .ok_or_else(|| anyhow!("item #{}: the CRM id `{id}` is empty or a dot", item.id))
        };
        let request = match (action.as_str(), &known) {
            ("create", _) => request(Method::POST, resource.clone(), Some(payload)),
            ("update", Some(id)) => request(Method::PUT, at(id)?, Some(payload)),
            ("delete", Some(id)) => request(Method::DELETE, at(id)?, None),
            _ => {
                return Err(anyhow!(
                    "item #{}: cannot {action} without a CRM id",
                    item.id
                ));
            }
        };
        Ok(Prepare::Send(Box::new(Prepared {
            request,
            action,
            lookup: None,
            follow_up: false,
            item,
        })))
    }

    /// Records one answer.
    fn handle(&mut self, sent: Sent) -> Result<()> {
        let Sent {
            p,
            result,
            ms,
            at,
            sent_ms,
            arrived_ms,
        } = sent;
        // An answer other than 401/403 says the credentials were taken (an open
        // `crm_credentials` alert clears).
        if matches!(
            &result,
            Ok(_) | Err(CrmError::Permanent { .. } | CrmError::RateLimited { .. })
        ) {
            self.run.credentials_checked("crm_credentials", None);
        }
        let at = at.as_str();
        let now = self.now();
        let run_id = self.run.run_id;
        let what = format!(
            "item #{} ({} {} {})",
            p.item.id, p.action, p.item.entity, p.item.record_id
        );
        let summary = p.request.summary();
        if p.lookup.is_none() {
            self.bar.inc(1);
        }
        if let (Some(lookup), Ok(answer)) = (&p.lookup, &result) {
            let found = lookup.key.matches(
                answer.body.as_ref().unwrap_or(&Value::Null),
                &self.s.list_pointer,
                &self.s.list_id_pointer,
                &lookup.value,
            );
            let status = answer.status;
            return self.found(p, found, status, &summary, (at, ms), &what);
        }
        let item = &p.item;
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
                    run_id,
                    at,
                    request: &summary,
                    status: Some(answer.status),
                    duration_ms: ms,
                    error: None,
                };
                let woken =
                    self.run
                        .store
                        .record_done(item, &p.action, ext.as_deref(), &now, &log)?;
                if woken > 0 {
                    self.run.add("woken", woken as i64);
                    self.reclaim = true;
                }
                self.run.counts.total += 1;
                self.run.counts.ok += 1;
                self.run.item_duration(ms);
                self.run.add("done", 1);
                if self.ctx.printer.item_lines() {
                    tracing::info!("{what}: {summary} -> {} [{ms}ms]", answer.status);
                }
            }
            Err(CrmError::Stop(m)) => {
                self.run
                    .store
                    .log_request(item.id, run_id, at, &summary, None, ms, Some(&m))?;
                self.run.store.release(&[item.id], &now)?;
                // Refused credentials open an alert at once, as renew's do.
                self.run.credentials_checked(
                    "crm_credentials",
                    Some("the CRM refused the credentials".into()),
                );
                if self.stop.is_none() {
                    self.stop = Some(m);
                }
            }
            Err(CrmError::RateLimited { retry_after }) => {
                self.run.store.log_request(
                    item.id,
                    run_id,
                    at,
                    &summary,
                    Some(429),
                    ms,
                    Some("429 Too Many Requests"),
                )?;
                let asked = retry_after.as_secs();
                let wait = asked.min(self.s.max_pause_secs);
                let before = self.pause_until;
                let (pause, counted) =
                    self.run
                        .store
                        .rate_pause(BUCKET, sent_ms, arrived_ms, wait as i64 * 1000)?;
                self.pause_until = pause.until_ms;
                // Another process may have paused meanwhile: the store says when it ends.
                self.last_pause_check = Instant::now();
                if asked > self.s.max_pause_secs && counted {
                    self.too_long = Some(asked);
                }
                self.run.store.release(&[item.id], &now)?;
                self.run.add("rate_limited", 1);
                self.run.counts.skipped += 1;
                if !counted {
                    // Sent before the pause began: its answer does not extend it.
                    tracing::debug!(
                        "{what}: the CRM answered 429 to a request in flight when the pause began; the item goes back to the queue"
                    );
                } else if pause.until_ms != before {
                    tracing::warn!(
                        "{what}: the CRM answered 429; everyone waits {}s from its answer, the item goes back to the queue",
                        ((pause.until_ms - arrived_ms).max(0) as u64).div_ceil(1000)
                    );
                }
            }
            Err(CrmError::Transient {
                status,
                message,
                maybe_applied,
            }) => {
                let message = match &p.lookup {
                    Some(l) => format!("looking the record up by `{}`: {message}", l.key.filter),
                    None => message,
                };
                self.run.store.log_request(
                    item.id,
                    run_id,
                    at,
                    &summary,
                    status,
                    ms,
                    Some(&message),
                )?;
                let backoff = self
                    .s
                    .backoff_secs
                    .saturating_mul(1 << item.attempts.min(16));
                let due = clock::to_store(
                    self.ctx.clock.now() + chrono::Duration::seconds(backoff as i64),
                );
                // A create the CRM may have applied: its outcome is unknown until looked up.
                let unknown = maybe_applied && p.request.method == Method::POST;
                let max_attempts = self.s.max_attempts;
                let failed = self.run.store.record_retry(
                    item.id,
                    status,
                    &message,
                    &due,
                    max_attempts,
                    unknown,
                    &now,
                )?;
                if p.lookup.is_some() {
                    self.bar.inc(1);
                }
                self.run.counts.total += 1;
                self.run.counts.failed += 1;
                self.run.item_duration(ms);
                if failed {
                    self.run.add("failed", 1);
                    tracing::warn!("{what}: {message}; failed after {max_attempts} attempts");
                } else {
                    self.run.add("retry", 1);
                    tracing::warn!(
                        "{what}: {message}; retried after {backoff}s (attempt {} of {max_attempts})",
                        item.attempts + 1
                    );
                }
            }
            Err(CrmError::Permanent { status, message }) => {
                let message = match &p.lookup {
                    Some(l) => format!(
                        "looking the record up by `{}` (its create's outcome is unknown): {message}; check `[crm.natural_keys]`",
                        l.key.filter
                    ),
                    None => message,
                };
                self.run.store.log_request(
                    item.id,
                    run_id,
                    at,
                    &summary,
                    Some(status),
                    ms,
                    Some(&message),
                )?;
                self.run
                    .store
                    .record_failed(item.id, Some(status), &message, &now)?;
                if p.lookup.is_some() {
                    self.bar.inc(1);
                }
                self.run.counts.total += 1;
                self.run.counts.failed += 1;
                self.run.item_duration(ms);
                self.run.add("failed", 1);
                tracing::warn!("{what}: {message}");
            }
        }
        Ok(())
    }
    /// What a lookup found: nothing (the create goes out), one record (adopted: its id is
    /// learned by updating it with the payload), several (for an operator: the item fails).
    fn found(
        &mut self,
        p: Prepared,
        found: Vec<String>,
        status: u16,
        summary: &str,
        (at, ms): (&str, i64),
        what: &str,
    ) -> Result<()> {
        let Prepared {
            mut item, lookup, ..
        } = p;
        let lookup = *lookup.expect("a lookup");
        let now = self.now();
        let by = format!("`{}`", lookup.key.filter);
        let (note, next) = match found.as_slice() {
            [] => (
                format!("not found at the CRM by {by}: created"),
                Some(("create", Method::POST, lookup.resource.clone())),
            ),
            [id] => match crate::http::path_segment(id) {
                // The id is the CRM's answer: one path segment whatever it holds.
                Some(segment) => (
                    format!("found at the CRM by {by} as {id}: that record is adopted and updated"),
                    Some((
                        "update",
                        Method::PUT,
                        format!("{}/{segment}", lookup.resource),
                    )),
                ),
                None => (
                    format!(
                        "found at the CRM by {by} with the id `{id}`, which is empty or a dot: for an operator; nothing was sent"
                    ),
                    None,
                ),
            },
            many => (
                format!(
                    "a create whose outcome is unknown, and the CRM has {} {} with this {by} (ids {}): which one is this record is for an operator to decide; nothing was sent",
                    many.len(),
                    item.entity,
                    many.join(", ")
                ),
                None,
            ),
        };
        let run_id = self.run.run_id;
        self.run
            .store
            .log_request(item.id, run_id, at, summary, Some(status), ms, Some(&note))?;
        let Some((action, method, path)) = next else {
            self.run.store.record_failed(item.id, None, &note, &now)?;
            self.bar.inc(1);
            self.run.counts.total += 1;
            self.run.counts.failed += 1;
            self.run.add("failed", 1);
            tracing::warn!("{what}: {note}");
            return Ok(());
        };
        // The outcome is known now: created or not. A record found is adopted at once, so that
        // whatever happens to the update, it is never created again.
        self.run.store.set_unknown_outcome(item.id, false)?;
        item.unknown_outcome = false;
        if let [id] = found.as_slice() {
            self.run
                .store
                .learn_external_id(&item.entity, &item.record_id, id, &now)?;
            self.run.add("adopted", 1);
        }
        if self.ctx.printer.item_lines() {
            tracing::info!("{what}: {summary} -> {status}: {note}");
        }
        self.ready.push_back(Prepared {
            request: Request {
                method,
                path,
                query: Vec::new(),
                body: Some(lookup.payload),
                idempotency_key: item.idempotency_key.clone(),
            },
            action: action.to_string(),
            lookup: None,
            follow_up: true,
            item,
        });
        Ok(())
    }
}
