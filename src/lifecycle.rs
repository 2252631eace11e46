//! The life of one job run, the same for every job: take the job's OS lock (released by the
//! kernel when the process dies), mark runs left `running` by a dead process as `interrupted`,
//! record the run, listen for SIGTERM/SIGINT, and at the end decide the status and the exit
//! code once, from the counts.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, Clock};
use crate::exit::{Code, CodedError};
use crate::job::Job;
use crate::output::{Printer, human_duration};
use crate::store::{FinishedRun, NewRun, RunStatus, Store};

/// How long the items in flight are given to end after SIGINT or SIGTERM before they are
/// abandoned (nothing recorded for them): the same for every job that works in parallel, and
/// well inside systemd's `TimeoutStopSec` (see `schedule`).
pub const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands what the workers send to `on_message` until they are all done. After SIGINT or
/// SIGTERM the items in flight get [`IN_FLIGHT_GRACE`] to end; then the workers are aborted
/// and what they were doing is abandoned (nothing recorded for it), with one warning naming
/// `what` (`contracts`, `clients`). The one collector of the jobs whose workers take items
/// from a shared queue (fetch-invoices and retry, download-boletos).
pub async fn collect<M>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<M>,
    workers: &mut tokio::task::JoinSet<()>,
    cancel: &Cancel,
    what: &str,
    mut on_message: impl FnMut(M) -> Result<()>,
) -> Result<()> {
    let mut deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => {
                    if let Err(e) = on_message(m) {
                        break Err(e);
                    }
                }
                None => break Ok(()),
            },
            _ = cancel.cancelled(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + IN_FLIGHT_GRACE);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                tracing::warn!(
                    "{what} still in flight {}s after the signal were abandoned; nothing was recorded for them",
                    IN_FLIGHT_GRACE.as_secs()
                );
                break Ok(());
            }
        }
    };
    workers.abort_all();
    result
}

/// Set when SIGINT or SIGTERM arrives: jobs stop taking new items. A tokio-util
/// `CancellationToken` (what waits on it wakes once) with the signal that cancelled, which
/// decides the exit code (130 or 143).
#[derive(Clone, Default)]
pub struct Cancel {
    signal: Arc<AtomicU8>,
    token: CancellationToken,
}

impl Cancel {
    /// Listens for SIGINT and SIGTERM in the background.
    pub fn install() -> Cancel {
        let cancel = Cancel::default();
        let c = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let sig = tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
            };
            c.trigger(sig);
        });
        cancel
    }

    /// Cancels as if signal `sig` had arrived.
    pub fn trigger(&self, sig: u8) {
        if self
            .signal
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::warn!(
                "received {}: finishing the items in flight, taking no new ones",
                if sig == 2 { "SIGINT" } else { "SIGTERM" }
            );
        }
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    fn exit_code(&self) -> Option<Code> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            2 => Some(Code::Interrupted),
            _ => Some(Code::Terminated),
        }
    }
}

/// Counts of one run; the status and exit code are derived from them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub total: i64,
    pub ok: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// A run in progress.
pub struct JobRun {
    pub store: Store,
    pub run_id: i64,
    pub cancel: Cancel,
    pub counts: Counts,
    /// Job-specific counters, stored as JSON and shown in `--json`.
    pub counters: serde_json::Map<String, Value>,
    /// Something is waiting that an operator should know of (e.g. the SMTP server is down):
    /// a run that would be `success` is `partial`.
    pub degraded: bool,
    /// Credentials a service accepted (`None`) or refused (`Some(why)`) in this run, by alert
    /// kind (e.g. `smtp_credentials`): a refusal opens an alert at once, an acceptance clears it.
    pub credentials: Vec<(&'static str, Option<String>)>,
    /// Work waiting in the store when the run started (for the "idle with work" alert).
    work_due: Option<i64>,
    /// Items the run set out to take, when the job knows (for `status`).
    planned: Option<i64>,
    /// When the counts so far were last written to the run's row.
    progress_at: Instant,
    job: Job,
    after: AfterRun,
    clock: Clock,
    started: Instant,
    started_at: String,
    durations: Vec<i64>,
    log: Vec<Value>,
    _lock: File,
}

/// What runs after each run of a job, and around it: alerts, the metrics file, health pings.
/// Built from the configuration when the command starts (`Ctx::load`) and handed to the run:
/// a value, not global state, so that two configurations in one process cannot mix.
#[derive(Clone, Default)]
pub struct AfterRun {
    pub alerts: crate::alerts::Alerts,
    pub metrics: crate::metrics::Metrics,
    pub pings: crate::pings::Pings,
}

/// The origin of a run started without one: `manual` from a terminal, else `automatic` (cron,
/// systemd).
pub fn default_origin() -> &'static str {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        "manual"
    } else {
        "automatic"
    }
}

/// Where the lock named `lock` lives for the store at `store_path`.
pub fn lock_path(store_path: &Path, lock: &str) -> PathBuf {
    let mut dir = store_path.as_os_str().to_owned();
    dir.push(".locks");
    PathBuf::from(dir).join(format!("{lock}.lock"))
}

impl JobRun {
    /// Takes the lock of the job's data (`lock`: jobs that work on the same rows share one,
    /// e.g. `fetch-invoices` and `retry`) and records the start of a run.
    pub fn start(
        store_path: &Path,
        clock: Clock,
        after: &AfterRun,
        job: Job,
        lock: &str,
        origin: &str,
        safra: Option<&str>,
    ) -> Result<JobRun> {
        let lock_file = lock_path(store_path, lock);
        if let Some(dir) = lock_file.parent() {
            crate::files::create_private_dir(dir).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (this user cannot write beside the store: run the job as the store's owner; `status`, `export`, `report` and `--dry-run` only read)"
                } else {
                    ""
                };
                anyhow::Error::new(e).context(format!(
                    "cannot create the lock folder `{}`{hint}",
                    dir.display()
                ))
            })?;
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_file)
            .with_context(|| format!("cannot open the lock file `{}`", lock_file.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                lock.read_to_string(&mut holder).ok();
                // The holder wrote `JOB: pid N, run #M since T`.
                let (other, who) = holder
                    .trim()
                    .split_once(": ")
                    .map(|(j, w)| (j.to_string(), w.to_string()))
                    .unwrap_or_else(|| (job.to_string(), "another process".to_string()));
                let message = if other == job.as_str() {
                    format!(
                        "`{job}` is already running ({who}); this start does nothing. Wait for it to end, or stop it if it is stuck"
                    )
                } else {
                    format!(
                        "`{other}` is running on the same data ({who}); this start of `{job}` does nothing. Run it again when that one ends"
                    )
                };
                return Err(CodedError {
                    code: Code::Locked,
                    message,
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock `{}`", lock_file.display()));
            }
        }
        let mut store = Store::open(store_path)?;
        let now = clock::to_store(clock.now());
        if let Some(pause) = store.pause_of(job.as_str())? {
            store.record_skip(job.as_str(), pause.reason.as_deref(), &now)?;
            let why = pause.reason.map(|r| format!(": {r}")).unwrap_or_default();
            return Err(CodedError {
                code: Code::Success,
                message: format!(
                    "`{job}` is paused since {}{why}; this start does nothing (`crm-jobs resume {job}` resumes it)",
                    pause.paused_at
                ),
            }
            .into());
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args = serde_json::to_string(&args)?;
        let run_id = store.insert_run(&NewRun {
            job: job.as_str(),
            origin,
            args: &args,
            safra,
            pid: std::process::id(),
            started_at: &now,
        })?;
        lock.set_len(0).ok();
        lock.rewind().ok();
        write!(
            lock,
            "{job}: pid {}, run #{run_id} since {now}",
            std::process::id()
        )
        .ok();
        lock.flush().ok();
        let mut run = JobRun {
            store,
            run_id,
            cancel: Cancel::install(),
            counts: Counts::default(),
            counters: serde_json::Map::new(),
            degraded: false,
            credentials: Vec::new(),
            work_due: None,
            planned: None,
            progress_at: Instant::now(),
            job,
            after: after.clone(),
            clock,
            started: Instant::now(),
            started_at: now.clone(),
            durations: Vec::new(),
            log: Vec::new(),
            _lock: lock,
        };
        // Measured only for the "idle with work" alert.
        if after.alerts.measure_work_due() {
            run.work_due = run
                .store
                .work_due(job.as_str(), &now, run.clock.today())
                .unwrap_or(None);
        }
        after.pings.start(job.as_str(), run_id);
        let stale = run.store.mark_interrupted(job.as_str(), &now, run_id)?;
        for id in stale {
            let msg = format!(
                "run #{id} of `{job}` was left running by a process that died: marked `interrupted`"
            );
            tracing::warn!("{msg}");
            run.event("warn", msg);
        }
        Ok(run)
    }

    /// Adds a notable event to the run's JSON log.
    pub fn event(&mut self, level: &str, message: impl Into<String>) {
        self.log.push(json!({
            "at": clock::to_store(self.clock.now()),
            "level": level,
            "message": message.into(),
        }));
    }

    /// Records the duration of one item (for min/avg/max), and about once a second how far the
    /// run got, for `status`.
    pub fn item_duration(&mut self, ms: i64) {
        self.durations.push(ms);
        if self.progress_at.elapsed() >= std::time::Duration::from_secs(1) {
            self.write_progress();
        }
    }

    /// Adds `n` items to those the run sets out to take (shown by `status` as "of N").
    pub fn plan(&mut self, n: usize) {
        self.planned = Some(self.planned.unwrap_or(0) + n as i64);
        self.write_progress();
    }

    /// Writes the counts so far to the run's row; a failure is only logged (the end writes them
    /// again).
    fn write_progress(&mut self) {
        self.progress_at = Instant::now();
        let c = &self.counts;
        if let Err(e) = self.store.run_progress(
            self.run_id,
            self.planned,
            (c.total, c.ok, c.failed, c.skipped),
        ) {
            tracing::debug!("progress of run #{} not recorded: {e:#}", self.run_id);
        }
    }

    /// Records that a service accepted (`None`) or refused (`Some(why)`) the credentials whose
    /// alert kind is `kind`; the first word of a run stands.
    pub fn credentials_checked(&mut self, kind: &'static str, refused: Option<String>) {
        if !self.credentials.iter().any(|(k, _)| *k == kind) {
            self.credentials.push((kind, refused));
        }
    }

    /// Adds `n` to a job-specific counter.
    pub fn add(&mut self, counter: &str, n: i64) {
        let entry = self.counters.entry(counter).or_insert(json!(0));
        *entry = json!(entry.as_i64().unwrap_or(0) + n);
    }

    /// Ends the run: decides status and exit code from the counts, stores them, prints the
    /// one-line summary (and the JSON summary with `--json`).
    pub fn finish(
        mut self,
        printer: &Printer,
        stop: Option<anyhow::Error>,
        detail: &str,
    ) -> Result<Code> {
        let elapsed = self.started.elapsed().as_millis() as i64;
        let (status, code) = if let Some(code) = self.cancel.exit_code() {
            (RunStatus::Interrupted, code)
        } else if stop.is_some() || (self.counts.failed > 0 && self.counts.ok == 0) {
            (RunStatus::Failed, Code::Failure)
        } else if self.counts.failed > 0 || self.degraded {
            (RunStatus::Partial, Code::Partial)
        } else {
            (RunStatus::Success, Code::Success)
        };
        let error = stop.as_ref().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            self.event("error", e.clone());
        }
        let item_ms = if self.durations.is_empty() {
            None
        } else {
            let min = *self.durations.iter().min().unwrap_or(&0);
            let max = *self.durations.iter().max().unwrap_or(&0);
            let avg = self.durations.iter().sum::<i64>() / self.durations.len() as i64;
            Some((min, avg, max))
        };
        let finished_at = clock::to_store(self.clock.now());
        let counters = Value::Object(self.counters.clone());
        self.store.finish_run(
            self.run_id,
            &FinishedRun {
                status,
                finished_at: &finished_at,
                duration_ms: elapsed,
                items_total: self.counts.total,
                items_ok: self.counts.ok,
                items_failed: self.counts.failed,
                items_skipped: self.counts.skipped,
                counters: &counters.to_string(),
                item_ms,
                error: error.as_deref(),
                log: &Value::Array(self.log.clone()).to_string(),
            },
        )?;
        self.after.alerts.after_run(
            &mut self.store,
            &crate::alerts::RunFacts {
                job: self.job.as_str(),
                total: self.counts.total,
                failed: self.counts.failed,
                duration_ms: elapsed,
                now: self.clock.now(),
                // Known only for runs that ended normally: did nothing while work waited?
                credentials: &self.credentials,
                idle_with_work: match status {
                    RunStatus::Success | RunStatus::Partial => self
                        .work_due
                        .map(|due| (self.counts.total == 0 && due > 0).then_some(due)),
                    _ => None,
                },
            },
        );
        self.after.metrics.write(&self.store);
        self.after.pings.finish(
            self.job.as_str(),
            self.run_id,
            code as u8,
            &format!("{status}: {detail}"),
        );
        let line = format!(
            "{} run #{}: {status} in {}: {}",
            self.job,
            self.run_id,
            human_duration(elapsed),
            detail
        );
        match status {
            RunStatus::Success => tracing::info!("{line}"),
            _ => tracing::warn!("{line}"),
        }
        if printer.json {
            printer.json_out(&json!({
                "run_id": self.run_id,
                "job": self.job,
                "status": status,
                "exit_code": code as u8,
                "started_at": self.started_at,
                "finished_at": finished_at,
                "duration_ms": elapsed,
                "items": {
                    "total": self.counts.total,
                    "ok": self.counts.ok,
                    "failed": self.counts.failed,
                    "skipped": self.counts.skipped,
                },
                "counters": counters,
                "item_ms": item_ms.map(|(min, avg, max)| json!({"min": min, "avg": avg, "max": max})),
                "error": error,
                "peak_rss_kb": peak_rss_kb(),
            }));
        }
        if let Some(stop) = stop {
            // The entry point prints it with its causes; the run is already recorded.
            return Err(stop);
        }
        Ok(code)
    }
}

/// The process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
