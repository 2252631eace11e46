//! Alerts: after every run, the job's incidents are looked at (failed runs in a row, an error
//! rate, a slow run, no success for too long). An incident that opens, and one that clears, each
//! queue one email in the outbox to `[alerts] to`, sent at once when SMTP is configured (else by
//! the next `renew --step emails`). A failure here is logged and never fails the job.

use chrono::{DateTime, Utc};

use crate::config::{AlertsConfig, Config, SmtpConfig};
use crate::mailer::{Mailer, Outcome};
use crate::store::{EmailStatus, NewEmail, Store};
use crate::timers::Planned;

struct Settings {
    alerts: AlertsConfig,
    smtp: SmtpConfig,
    password: Option<String>,
    domain: String,
    plan: Vec<Planned>,
}

/// The alerts of this process's runs: off unless `[alerts] to` is set. Built from the
/// configuration when the command starts and handed to each run (no global state).
#[derive(Clone, Default)]
pub struct Alerts {
    settings: Option<std::sync::Arc<Settings>>,
}

impl Alerts {
    /// The alerts `config` asks for, on its schedule `plan` (`password`: the SMTP password,
    /// if any).
    pub fn from_config(config: &Config, plan: &[Planned], password: Option<String>) -> Alerts {
        Alerts {
            settings: config.alerts.to.is_some().then(|| {
                std::sync::Arc::new(Settings {
                    alerts: config.alerts.clone(),
                    smtp: config.smtp.clone(),
                    password,
                    domain: config.renew.message_id_domain.clone(),
                    plan: plan.to_vec(),
                })
            }),
        }
    }

    /// Whether runs measure the work waiting when they start (for the "idle with work" alert).
    pub fn measure_work_due(&self) -> bool {
        self.settings
            .as_ref()
            .is_some_and(|s| s.alerts.idle_with_work)
    }

    /// Looks at the job's incidents after a run; never fails the job.
    pub fn after_run(&self, store: &mut Store, facts: &RunFacts) {
        if let Some(settings) = &self.settings {
            after_run(store, settings, facts);
        }
    }
}

/// What a finished run says.
pub struct RunFacts<'a> {
    pub job: &'a str,
    pub total: i64,
    pub failed: i64,
    pub duration_ms: i64,
    pub now: DateTime<Utc>,
    /// `Some(Some(n))`: the run did nothing while `n` items waited; `Some(None)`: it did work or
    /// nothing waited; `None`: not known (the run failed or was interrupted).
    pub idle_with_work: Option<Option<i64>>,
    /// Credentials services accepted (`None`) or refused (`Some(why)`), by incident kind.
    pub credentials: &'a [(&'static str, Option<String>)],
}

fn after_run(store: &mut Store, settings: &Settings, facts: &RunFacts) {
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
    if a.idle_with_work
        && let Some(idle) = f.idle_with_work
    {
        checks.push((
            "idle",
            idle.map(|n| format!("the last run did nothing while {n} item(s) were waiting for it")),
        ));
    }
    // Refused credentials do not wait for failures to add up: nothing works until they are
    // fixed. Only a service the run talked to says anything.
    for (kind, refused) in f.credentials {
        checks.push((kind, refused.clone()));
    }
    let mut checks: Vec<(&str, &str, Option<String>)> =
        checks.into_iter().map(|(k, p)| (f.job, k, p)).collect();
    // Every job's staleness, after any job's run: a job that stopped running says nothing.
    for job in crate::job::Job::ALL.map(crate::job::Job::as_str) {
        if let Some(problem) = overdue(store, s, job, f.now)? {
            checks.push((job, "stale", problem));
        }
    }
    let to = a.to.clone().unwrap_or_default();
    let now = crate::clock::to_store(f.now);
    let mut queued = false;
    for (job, kind, problem) in checks {
        let open = store.open_incident(job, kind)?;
        match (problem, open) {
            (Some(detail), None) => {
                let subject = format!("🚨 crm-jobs: {job}: {detail}");
                let (text, html) = bodies(
                    "opened",
                    minijinja::context! { job => job, detail => &detail },
                )?;
                let key = format!("alert:{}:{kind}:{now}:open", job);
                let id = format!(
                    "<alert.{}.{kind}.{}.open@{}>",
                    job,
                    f.now.timestamp(),
                    s.domain
                );
                store.open_incident_with_email(
                    job,
                    kind,
                    &detail,
                    &now,
                    &email(&key, &id, &to, &subject, &text, &html),
                )?;
                tracing::warn!("alert opened for `{}`: {detail}", job);
                queued = true;
            }
            (None, Some((id, opened))) => {
                let subject = format!("✅ crm-jobs: {job} voltou ao normal ({kind})");
                let (text, html) = bodies(
                    "cleared",
                    minijinja::context! { job => job, opened => &opened },
                )?;
                let key = format!("alert:{}:{kind}:{opened}:clear", job);
                let mid = format!(
                    "<alert.{}.{kind}.{}.clear@{}>",
                    job,
                    f.now.timestamp(),
                    s.domain
                );
                store.clear_incident_with_email(
                    id,
                    &now,
                    &email(&key, &mid, &to, &subject, &text, &html),
                )?;
                tracing::info!("alert cleared for `{}` ({kind})", job);
                queued = true;
            }
            _ => {}
        }
    }
    if queued && (s.smtp.host.is_some() || s.smtp.mode == crate::config::SmtpMode::Eml) {
        send_alerts(store, s)?;
    }
    Ok(())
}

/// Whether `job` went too long without a success: `None` when nothing says how long is too
/// long (no `[alerts.stale_hours]` entry, no schedule entry), else the problem if any.
fn overdue(
    store: &Store,
    s: &Settings,
    job: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Option<String>>> {
    let a = &s.alerts;
    let state = store.job_state(job)?;
    let last = state
        .last_success_at
        .as_deref()
        .and_then(crate::clock::from_store);
    if let Some(hours) = a.stale_hours.get(job) {
        let stale = last.is_none_or(|t| (now - t).num_hours() >= i64::from(*hours));
        return Ok(Some(
            stale.then(|| format!("no successful run for {hours} hours or more")),
        ));
    }
    let missed = a.missed_starts as usize;
    let grace = chrono::Duration::minutes(i64::from(a.grace_minutes));
    let Some(deadline) = crate::timers::deadline(&s.plan, job, now - grace, missed) else {
        return Ok(None);
    };
    // A job that never succeeded is measured from its first run, else from the store's.
    let since = match last {
        Some(t) => Some(t),
        None => {
            let (first_of_job, first_of_any) = store.first_runs(job)?;
            first_of_job
                .or(first_of_any)
                .as_deref()
                .and_then(crate::clock::from_store)
        }
    };
    let Some(since) = since else {
        return Ok(Some(None));
    };
    if since >= deadline {
        return Ok(Some(None));
    }
    let local = deadline.with_timezone(&chrono_tz::America::Sao_Paulo);
    let what = match last {
        Some(_) => "no successful run since",
        None => "never succeeded, though scheduled since",
    };
    Ok(Some(Some(format!(
        "{what} {} ({missed} scheduled start(s) missed; see `crm-jobs schedule list`)",
        local.format("%Y-%m-%d %H:%M %Z")
    ))))
}

/// The plain-text and HTML bodies of an alert email, from `templates/alert/<which>.txt|html`.
fn bodies(which: &str, ctx: minijinja::Value) -> anyhow::Result<(String, String)> {
    Ok((
        crate::templates::render(&format!("alert/{which}.txt"), &ctx)?,
        crate::templates::render(&format!("alert/{which}.html"), &ctx)?,
    ))
}

fn email<'a>(
    key: &'a str,
    id: &'a str,
    to: &'a str,
    subject: &'a str,
    text: &'a str,
    html: &'a str,
) -> NewEmail<'a> {
    NewEmail {
        dedupe_key: key,
        message_id: id,
        kind: "alert",
        subscription_id: None,
        to,
        subject,
        text,
        html,
    }
}

/// Sends the pending alert emails now (the other emails keep waiting for `renew`).
fn send_alerts(store: &mut Store, s: &Settings) -> anyhow::Result<()> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    let mut mailer = Mailer::new(&s.smtp, s.password.clone())?;
    for e in store
        .pending_emails(1000)?
        .into_iter()
        .filter(|e| e.kind == "alert")
    {
        let now = crate::clock::to_store(Utc::now());
        store.set_email_status(e.id, EmailStatus::Sending, None, &now)?;
        let outcome = tokio::task::block_in_place(|| handle.block_on(mailer.send(&e)));
        let (status, error) = match outcome {
            Outcome::Sent => (EmailStatus::Sent, None),
            Outcome::Retry(m) | Outcome::NotSent(m) => (EmailStatus::Pending, Some(m)),
            Outcome::Failed(m) => (EmailStatus::Failed, Some(m)),
            Outcome::Unknown(m) => (EmailStatus::Unknown, Some(m)),
        };
        store.set_email_status(
            e.id,
            status,
            error.as_deref(),
            &crate::clock::to_store(Utc::now()),
        )?;
    }
    tokio::task::block_in_place(|| handle.block_on(mailer.close()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's problem comes from outside (an error a service answered): in the HTML part it is
    /// text, never markup; the plain-text part keeps it as it is.
    #[test]
    fn a_hostile_detail_is_escaped_in_the_html_part_of_an_alert() {
        let detail = r#"<script>alert("x")</script> & "quoted""#;
        let (text, html) = bodies(
            "opened",
            minijinja::context! { job => "fetch-invoices", detail => detail },
        )
        .unwrap();
        assert_eq!(
            text,
            format!(
                "O job `fetch-invoices` precisa de atenção: {detail}.\n\nVeja `crm-jobs status` e o último run (`crm-jobs status --json`).\nUm novo email chega quando o problema for resolvido.\n"
            )
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains(
                "precisa de atenção: &lt;script&gt;alert(&quot;x&quot;)&lt;&#x2f;script&gt; &amp; &quot;quoted&quot;."
            ),
            "{html}"
        );
        let (text, html) = bodies(
            "cleared",
            minijinja::context! { job => "renew", opened => "2025-11-10T12:00:00.000Z" },
        )
        .unwrap();
        assert_eq!(
            text,
            "O problema do job `renew` aberto em 2025-11-10T12:00:00.000Z foi resolvido.\n"
        );
        assert!(html.contains("<code>renew</code> aberto em"), "{html}");
    }
}
