//! Alerts: after every run, the job's incidents are looked at (failed runs in a row, an error
//! rate, a slow run, no success for too long). An incident that opens, and one that clears, each
//! queue one email in the outbox to `[alerts] to`, sent at once when SMTP is configured (else by
//! the next `renew --step emails`). A failure here is logged and never fails the job.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::config::{AlertsConfig, SmtpConfig};
use crate::mailer::{Mailer, Outcome};
use crate::store::{NewEmail, Store};

struct Settings {
    alerts: AlertsConfig,
    smtp: SmtpConfig,
    password: Option<String>,
    domain: String,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the alert settings once per process (from the configuration).
pub fn configure(alerts: &AlertsConfig, smtp: &SmtpConfig, password: Option<String>, domain: &str) {
    if alerts.to.is_some() {
        SETTINGS
            .set(Settings {
                alerts: alerts.clone(),
                smtp: smtp.clone(),
                password,
                domain: domain.to_string(),
            })
            .ok();
    }
}

/// What a finished run says.
pub struct RunFacts<'a> {
    pub job: &'a str,
    pub total: i64,
    pub failed: i64,
    pub duration_ms: i64,
    pub now: DateTime<Utc>,
}

/// Looks at the job's incidents after a run; never fails the job.
pub fn after_run(store: &mut Store, facts: &RunFacts) {
    let Some(settings) = SETTINGS.get() else {
        return;
    };
    if let Err(e) = evaluate(store, settings, facts) {
        tracing::warn!("alerts: {e:#}");
    }
}

fn evaluate(store: &mut Store, s: &Settings, f: &RunFacts) -> anyhow::Result<()> {
    let a = &s.alerts;
    let state = store.job_state(f.job)?;
    let mut checks: Vec<(&str, Option<String>)> = vec![
        (
            "consecutive_failures",
            (state.consecutive_failures >= i64::from(a.consecutive_failures))
                .then(|| format!("{} failed runs in a row", state.consecutive_failures)),
        ),
        (
            "error_rate",
            (f.total >= 5 && f.failed * 100 > f.total * i64::from(a.error_rate_percent))
                .then(|| format!("{} of {} items failed in the last run", f.failed, f.total)),
        ),
        (
            "slow_run",
            (f.duration_ms > i64::from(a.max_run_minutes) * 60_000)
                .then(|| format!("the last run took {} min", f.duration_ms / 60_000)),
        ),
    ];
    if let Some(hours) = a.stale_hours.get(f.job) {
        let last = state
            .last_success_at
            .as_deref()
            .and_then(crate::clock::from_store);
        let stale = last.is_none_or(|t| (f.now - t).num_hours() >= i64::from(*hours));
        checks.push((
            "stale",
            stale.then(|| format!("no successful run for {hours} hours or more")),
        ));
    }
    let to = a.to.clone().unwrap_or_default();
    let now = crate::clock::to_store(f.now);
    let mut queued = false;
    for (kind, problem) in checks {
        let open = store.open_incident(f.job, kind)?;
        match (problem, open) {
            (Some(detail), None) => {
                let subject = format!("🚨 crm-jobs: {}: {detail}", f.job);
                let text = format!(
                    "O job `{}` precisa de atenção: {detail}.\n\nVeja `crm-jobs status` e o último run (`crm-jobs status --json`).\nUm novo email chega quando o problema for resolvido.\n",
                    f.job
                );
                let key = format!("alert:{}:{kind}:{now}:open", f.job);
                let id = format!(
                    "<alert.{}.{kind}.{}.open@{}>",
                    f.job,
                    f.now.timestamp(),
                    s.domain
                );
                store.open_incident_with_email(
                    f.job,
                    kind,
                    &detail,
                    &now,
                    &email(&key, &id, &to, &subject, &text),
                )?;
                tracing::warn!("alert opened for `{}`: {detail}", f.job);
                queued = true;
            }
            (None, Some((id, opened))) => {
                let subject = format!("✅ crm-jobs: {} voltou ao normal ({kind})", f.job);
                let text = format!(
                    "O problema do job `{}` aberto em {opened} foi resolvido.\n",
                    f.job
                );
                let key = format!("alert:{}:{kind}:{opened}:clear", f.job);
                let mid = format!(
                    "<alert.{}.{kind}.{}.clear@{}>",
                    f.job,
                    f.now.timestamp(),
                    s.domain
                );
                store.clear_incident_with_email(
                    id,
                    &now,
                    &email(&key, &mid, &to, &subject, &text),
                )?;
                tracing::info!("alert cleared for `{}` ({kind})", f.job);
                queued = true;
            }
            _ => {}
        }
    }
    if queued && (s.smtp.host.is_some() || s.smtp.mode == "eml") {
        send_alerts(store, s)?;
    }
    Ok(())
}

fn email<'a>(
    key: &'a str,
    id: &'a str,
    to: &'a str,
    subject: &'a str,
    text: &'a str,
) -> NewEmail<'a> {
    NewEmail {
        dedupe_key: key,
        message_id: id,
        kind: "alert",
        subscription_id: None,
        to,
        subject,
        text,
        html: text,
    }
}

/// Sends the pending alert emails now (the other emails keep waiting for `renew`).
fn send_alerts(store: &mut Store, s: &Settings) -> anyhow::Result<()> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    let mailer = Mailer::new(&s.smtp, s.password.clone())?;
    for e in store
        .pending_emails(1000)?
        .into_iter()
        .filter(|e| e.kind == "alert")
    {
        let now = crate::clock::to_store(Utc::now());
        store.set_email_status(e.id, "sending", None, &now)?;
        let outcome = tokio::task::block_in_place(|| handle.block_on(mailer.send(&e)));
        let (status, error) = match outcome {
            Outcome::Sent => ("sent", None),
            Outcome::Retry(m) => ("pending", Some(m)),
            Outcome::Failed(m) => ("failed", Some(m)),
            Outcome::Unknown(m) => ("unknown", Some(m)),
        };
        store.set_email_status(
            e.id,
            status,
            error.as_deref(),
            &crate::clock::to_store(Utc::now()),
        )?;
    }
    Ok(())
}
