//! The Prometheus textfile (node_exporter's textfile collector): after every run, the state of
//! every job and of the queues, written atomically to `[metrics] textfile_dir`/crm_jobs.prom.

use crate::job::Job;
use crate::store::Store;
use std::fmt::Write;
use std::path::PathBuf;

/// Where the textfile goes after each run (`[metrics] textfile_dir`), if anywhere: built from
/// the configuration when the command starts and handed to each run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub dir: Option<PathBuf>,
}

/// The file's text.
pub fn render(store: &Store) -> anyhow::Result<String> {
    let mut out = String::new();
    let ts = |t: &str| {
        crate::clock::from_store(t)
            .map(|t| t.timestamp())
            .unwrap_or(0)
    };
    let header = |out: &mut String, name: &str, help: &str| {
        writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge").ok();
    };
    let states: Vec<_> = Job::ALL
        .iter()
        .map(|j| store.job_state(j.as_str()))
        .collect::<anyhow::Result<_>>()?;
    header(
        &mut out,
        "crm_jobs_last_success_timestamp_seconds",
        "Unix time of the job's last successful run.",
    );
    for s in &states {
        if let Some(t) = &s.last_success_at {
            writeln!(
                out,
                "crm_jobs_last_success_timestamp_seconds{{job=\"{}\"}} {}",
                s.job,
                ts(t)
            )
            .ok();
        }
    }
    header(
        &mut out,
        "crm_jobs_last_run_duration_seconds",
        "Duration of the job's last finished run.",
    );
    for s in &states {
        if let Some(ms) = s.last_duration_ms {
            writeln!(
                out,
                "crm_jobs_last_run_duration_seconds{{job=\"{}\"}} {:.3}",
                s.job,
                ms as f64 / 1000.0
            )
            .ok();
        }
    }
    header(
        &mut out,
        "crm_jobs_last_run_items",
        "Items of the job's last finished run, by outcome.",
    );
    for job in Job::ALL {
        if let Some((ok, failed, skipped)) = store.last_run_items(job.as_str())? {
            for (outcome, n) in [("ok", ok), ("failed", failed), ("skipped", skipped)] {
                writeln!(
                    out,
                    "crm_jobs_last_run_items{{job=\"{job}\",outcome=\"{outcome}\"}} {n}"
                )
                .ok();
            }
        }
    }
    header(
        &mut out,
        "crm_jobs_consecutive_failures",
        "Failed runs in a row, most recent first.",
    );
    for s in &states {
        writeln!(
            out,
            "crm_jobs_consecutive_failures{{job=\"{}\"}} {}",
            s.job, s.consecutive_failures
        )
        .ok();
    }
    header(&mut out, "crm_jobs_paused", "1 when the job is paused.");
    for s in &states {
        writeln!(
            out,
            "crm_jobs_paused{{job=\"{}\"}} {}",
            s.job,
            u8::from(s.paused.is_some())
        )
        .ok();
    }
    header(
        &mut out,
        "crm_jobs_queue_items",
        "CRM outbox items by status.",
    );
    for (status, n) in store.queue_counts()? {
        writeln!(out, "crm_jobs_queue_items{{status=\"{status}\"}} {n}").ok();
    }
    header(
        &mut out,
        "crm_jobs_email_outbox",
        "Emails of the outbox by status.",
    );
    for (status, n) in store.email_counts()? {
        writeln!(out, "crm_jobs_email_outbox{{status=\"{status}\"}} {n}").ok();
    }
    header(
        &mut out,
        "crm_jobs_invoices",
        "Expected invoices by fetch status.",
    );
    for (status, n) in store.invoice_status_counts()? {
        writeln!(out, "crm_jobs_invoices{{fetch_status=\"{status}\"}} {n}").ok();
    }
    Ok(out)
}

impl Metrics {
    /// Writes the file if a folder is configured; a failure is logged and never fails the job.
    pub fn write(&self, store: &Store) {
        let Some(dir) = &self.dir else { return };
        write(dir, store);
    }
}

fn write(dir: &std::path::Path, store: &Store) {
    let result = render(store)
        .and_then(|text| crate::files::write_atomic(dir, "crm_jobs.prom", text.as_bytes()));
    if let Err(e) = result {
        tracing::warn!(
            "cannot write the metrics file in `{}`: {e:#}",
            dir.display()
        );
    }
}
