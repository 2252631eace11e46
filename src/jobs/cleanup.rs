//! `crm-jobs cleanup`: removes rows past their retention (request log, finished queue items,
//! failed ones later, old run history) in small batches that never hold the write lock long,
//! then checkpoints the WAL. Every job's old rows join the same list of rules
//! (`store::RETENTION`).

use anyhow::Result;
use chrono::Duration;

use super::Ctx;
use crate::clock;
use crate::exit::Code;
use crate::job::Job;
use crate::store::RETENTION;

/// Every rule `--only` takes: the removals of `store::RETENTION`, then the changes and the
/// saved pages.
const RULES: [&str; 9] = [
    "sync_log",
    "queue_done",
    "queue_failed",
    "runs",
    "job_skips",
    "email_outbox",
    "sessions",
    "payments",
    "diagnostics",
];

/// Arguments of `cleanup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Count what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these rules (repeatable): `sync_log`, `queue_done`, `queue_failed`, `runs`,
    /// `job_skips`, `email_outbox`, `sessions`, `payments`, `diagnostics`. Default: all.
    #[arg(long, value_name = "RULE", value_parser = RULES)]
    pub only: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config.cleanup;
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    // Every rule has its own key: a new rule without one is a bug caught by the tests.
    let days = |name: &str| match name {
        "sync_log" => cfg.sync_log_days,
        "queue_done" => cfg.queue_done_days,
        "queue_failed" => cfg.queue_failed_days,
        "runs" | "job_skips" => cfg.runs_days,
        "email_outbox" => cfg.email_outbox_days,
        other => unreachable!("retention rule `{other}` has no `[cleanup]` key"),
    };
    let now = ctx.clock.now();
    let cutoff = |name: &str| clock::to_store(now - Duration::days(i64::from(days(name))));
    let saved_pages = crate::diagnostics::folder(&ctx.store_path()?);
    if args.dry_run {
        let store = ctx.open_store_for_reading()?;
        for rule in RETENTION.iter().filter(|r| wanted(r.name)) {
            let n = store.retention_count(rule, &cutoff(rule.name))?;
            crate::outln!("{}\t{n}\tolder than {} days", rule.name, days(rule.name));
        }
        if wanted("diagnostics") {
            let n = crate::diagnostics::remove_older_than(
                &saved_pages,
                now,
                cfg.diagnostics_days,
                true,
            )?;
            crate::outln!("diagnostics\t{n}\tolder than {} days", cfg.diagnostics_days);
        }
        ctx.printer.say("dry run: nothing was removed");
        return Ok(Code::Success);
    }
    let origin = crate::lifecycle::default_origin();
    let mut run = ctx.start_run(Job::Cleanup, "cleanup", origin, None)?;
    let mut parts = Vec::new();
    for rule in RETENTION.iter().filter(|r| wanted(r.name)) {
        let cut = cutoff(rule.name);
        let mut removed = 0usize;
        loop {
            if run.cancel.is_cancelled() {
                break;
            }
            // One short transaction per batch: the jobs running meanwhile wait milliseconds.
            let n = run.store.retention_delete(rule, &cut, cfg.batch_size)?;
            removed += n;
            if n < cfg.batch_size as usize {
                break;
            }
            tokio::task::yield_now().await;
        }
        run.add(rule.name, removed as i64);
        run.counts.total += removed as i64;
        run.counts.ok += removed as i64;
        parts.push(format!("{removed} {}", rule.name));
    }
    // Rows that are kept but changed, each with an audit row.
    let sessions_cut = clock::to_store(now - Duration::days(i64::from(cfg.sessions_days)));
    let payments_cut = clock::to_store(now - Duration::days(i64::from(cfg.pending_payments_days)));
    let stamp = clock::to_store(now);
    let mut sessions = 0;
    while wanted("sessions") {
        let n =
            run.store
                .soft_delete_sessions(&sessions_cut, run.run_id, &stamp, cfg.batch_size)?;
        sessions += n;
        if n < cfg.batch_size as usize || run.cancel.is_cancelled() {
            break;
        }
    }
    let mut payments = 0;
    while wanted("payments") {
        let n =
            run.store
                .cancel_stale_payments(&payments_cut, run.run_id, &stamp, cfg.batch_size)?;
        payments += n;
        if n < cfg.batch_size as usize || run.cancel.is_cancelled() {
            break;
        }
    }
    run.add("sessions_soft_deleted", sessions as i64);
    run.add("payments_cancelled", payments as i64);
    run.counts.total += (sessions + payments) as i64;
    run.counts.ok += (sessions + payments) as i64;
    if wanted("sessions") {
        parts.push(format!("{sessions} session(s) soft-deleted"));
    }
    if wanted("payments") {
        parts.push(format!("{payments} pending payment(s) cancelled"));
    }
    if wanted("diagnostics") {
        // Saved portal pages (files, not rows) past their retention.
        let n =
            crate::diagnostics::remove_older_than(&saved_pages, now, cfg.diagnostics_days, false)?;
        run.add("diagnostics", n as i64);
        run.counts.total += n as i64;
        run.counts.ok += n as i64;
        parts.push(format!("{n} saved page(s)"));
    }
    // The file gives back the pages the removals freed.
    if !run.cancel.is_cancelled() {
        let (bytes, converted) = run.store.give_back_free_pages()?;
        run.add("bytes_given_back", bytes);
        parts.push(format!(
            "{:.1} MB given back to the disk{}",
            bytes as f64 / 1_000_000.0,
            if converted {
                " (the store was converted to incremental vacuum, once)"
            } else {
                ""
            }
        ));
    }
    let (busy, log, moved) = run.store.checkpoint()?;
    if busy != 0 {
        tracing::info!(
            "WAL checkpoint could not finish while other jobs read the store ({moved} of {log} pages moved); the next one will"
        );
    }
    run.finish(&ctx.printer, None, &format!("removed {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `job_skips` and `diagnostics` were in no built-in entry: they never ran on schedule.
    #[test]
    fn the_built_in_schedule_applies_every_rule() {
        let plan = crate::timers::plan(&crate::config::Config::default()).unwrap();
        let mut scheduled: Vec<&str> = plan
            .iter()
            .filter(|p| p.job == Job::Cleanup)
            .flat_map(|p| {
                p.command
                    .windows(2)
                    .filter(|w| w[0] == "--only")
                    .map(|w| w[1].as_str())
                    .collect::<Vec<_>>()
            })
            .collect();
        scheduled.sort_unstable();
        let mut all = RULES.to_vec();
        all.sort_unstable();
        assert_eq!(scheduled, all);
        for rule in RETENTION {
            assert!(RULES.contains(&rule.name), "{}", rule.name);
        }
    }
}
