//! `crm-jobs renew`: the subscription lifecycle (docs/src/reference/domain.md#subscriptions).
//! Steps, in order: `expiring` (warn subscriptions whose period ends within `--days`, once per
//! period), `expired` (make overdue ones inactive and take the plan away), `stripe` (ask Stripe
//! about the subscriptions whose period ends today and store the new period from Stripe's dates),
//! then `emails` (send the outbox). Each state change, its audit rows and its email are written in
//! one transaction; an email is sent at most once knowingly, and one whose outcome is unknown is
//! reported, not resent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Days, TimeZone, Utc};
use chrono_tz::America::Sao_Paulo;
use clap::ValueEnum;
use serde_json::json;

use super::Ctx;
use crate::clock;
use crate::email::{self, Kind};
use crate::exit::{Code, CodedError};
use crate::job::Job;
use crate::lifecycle::JobRun;
use crate::mailer::{Mailer, Outcome, Unusable};
use crate::store::{Audit, Change, EmailStatus, NewEmail, SubscriptionRow};
use crate::stripe::{StripeClient, StripeError, StripeSubscription};

/// Arguments of `renew`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only this step (default: every step, in order).
    #[arg(long, value_enum)]
    pub step: Option<Step>,
    /// Warn subscriptions whose period ends within this many days (default `[renew] days`, 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=60))]
    pub days: Option<u32>,
    /// List what each step would do, and stop: no request, no write, no email.
    #[arg(long)]
    pub dry_run: bool,
    /// Put an `unknown` or `failed` email back in the queue (after checking it was not
    /// delivered), and stop.
    #[arg(long, value_name = "EMAIL_ID", conflicts_with = "resend_all")]
    pub resend: Option<i64>,
    /// Put every `unknown` and `failed` email back in the queue, and stop.
    #[arg(long)]
    pub resend_all: bool,
}

/// The steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Step {
    Expiring,
    Expired,
    Stripe,
    Emails,
}

fn instant(text: &str) -> Result<DateTime<Utc>> {
    clock::from_store(text).ok_or_else(|| anyhow!("`{text}` is not an RFC 3339 instant"))
}

/// Today's bounds in São Paulo, as UTC instants.
fn today_bounds(ctx: &Ctx) -> (DateTime<Utc>, DateTime<Utc>) {
    let today = ctx.clock.today();
    let start = Sao_Paulo
        .from_local_datetime(&today.and_hms_opt(0, 0, 0).expect("midnight"))
        .earliest()
        .expect("São Paulo has a midnight")
        .with_timezone(&Utc);
    let end = Sao_Paulo
        .from_local_datetime(
            &(today + Days::new(1))
                .and_hms_opt(0, 0, 0)
                .expect("midnight"),
        )
        .earliest()
        .expect("São Paulo has a midnight")
        .with_timezone(&Utc);
    (start, end)
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    if args.resend.is_some() || args.resend_all {
        let n = ctx.open_store()?.resend_emails(args.resend)?;
        ctx.printer.say(&format!(
            "{n} email(s) put back in the queue: the next `renew --step emails` sends them"
        ));
        return Ok(Code::Success);
    }
    let days = args.days.unwrap_or(cfg.renew.days);
    let steps: Vec<Step> = match args.step {
        Some(s) => vec![s],
        None => vec![Step::Expiring, Step::Expired, Step::Stripe, Step::Emails],
    };
    let now = ctx.clock.now();
    let now_s = clock::to_store(now);
    let until = clock::to_store(now + chrono::Duration::days(i64::from(days)));
    let (day_start, day_end) = today_bounds(ctx);
    let grace = chrono::Duration::days(i64::from(cfg.renew.stripe_grace_days));
    let stripe_from = clock::to_store(day_start - grace);
    let stripe_cutoff = clock::to_store(now - grace);
    if args.dry_run {
        let store = ctx.open_store_for_reading()?;
        for step in &steps {
            let rows = match step {
                Step::Expiring => store.expiring(&now_s, &until)?,
                Step::Expired => store.expired(&now_s, &stripe_cutoff)?,
                Step::Stripe => store.stripe_due(&stripe_from, &clock::to_store(day_end))?,
                Step::Emails => {
                    let pending = store.pending_emails(cfg.renew.email_batch)?;
                    for e in &pending {
                        crate::outln!("emails\t{}\t{}\t{}", e.id, e.kind, e.subject);
                    }
                    continue;
                }
            };
            for r in rows {
                crate::outln!(
                    "{:?}\t{}\t{}\t{}",
                    step,
                    r.external_id,
                    r.email,
                    r.current_period_end
                );
            }
        }
        ctx.printer
            .say("dry run: nothing was asked, written or sent");
        return Ok(Code::Success);
    }
    // Secrets and clients are checked before the run starts, for the steps that need them.
    let stripe = if steps.contains(&Step::Stripe) {
        let base = cfg.stripe.base_url.clone().ok_or_else(|| {
            CodedError::config("`[stripe] base_url` is not set: set it in the config file or `CRM_JOBS_STRIPE_BASE_URL` (the real API is https://api.stripe.com)")
        })?;
        let key = crate::config::secret("CRM_JOBS_STRIPE_SECRET_KEY", cfg.stripe.secret_key_file.as_deref())?
            .ok_or_else(|| CodedError::config("the Stripe secret key is not set: export `CRM_JOBS_STRIPE_SECRET_KEY` or set `[stripe] secret_key_file`"))?;
        Some(Arc::new(StripeClient::new(
            &base,
            &key,
            &cfg.stripe.api_version,
            Duration::from_secs(cfg.stripe.timeout_secs),
            cfg.stripe.retries,
        )?))
    } else {
        None
    };
    let mut mailer = if steps.contains(&Step::Emails) {
        // The password only matters (and its file is only read) when there is a user for AUTH.
        let password = match cfg.smtp.user {
            Some(_) => {
                crate::config::secret("CRM_JOBS_SMTP_PASSWORD", cfg.smtp.password_file.as_deref())?
            }
            None => None,
        };
        Some(Mailer::new(&cfg.smtp, password).map_err(|e| CodedError::config(format!("{e:#}")))?)
    } else {
        None
    };
    let origin = crate::lifecycle::default_origin();
    let mut run = ctx.start_run(Job::Renew, "subscriptions", origin, None)?;
    let lost = run.store.recover_sending(&now_s)?;
    if !lost.is_empty() {
        let m = format!(
            "{} email(s) were being handed to the SMTP server when a process died: outcome unknown, not resent (ids {:?}; `crm-jobs renew --resend ID` after checking)",
            lost.len(),
            lost
        );
        tracing::warn!("{m}");
        run.event("warn", m);
        run.add("emails_unknown", lost.len() as i64);
        run.counts.failed += lost.len() as i64;
    }
    let mut stop = None;
    for step in steps {
        if run.cancel.is_cancelled() || stop.is_some() {
            break;
        }
        let result = match step {
            Step::Expiring => expiring(ctx, &mut run, &now_s, &until),
            Step::Expired => expired(ctx, &mut run, &now_s, &stripe_cutoff),
            Step::Stripe => match &stripe {
                Some(client) => {
                    stripe_step(ctx, &mut run, client.clone(), day_start - grace, day_end).await
                }
                None => Ok(()),
            },
            Step::Emails => match &mut mailer {
                Some(m) => emails(ctx, &mut run, m).await,
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            stop = Some(e);
        }
    }
    let n = |k: &str| {
        run.counters
            .get(k)
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    };
    let detail = format!(
        "{} warned, {} expired, {} renewed ({} not renewals, {} unchanged, {} Stripe errors); emails: {} sent, {} waiting, {} failed, {} unknown",
        n("warned"),
        n("expired"),
        n("renewed"),
        n("not_renewed"),
        n("unchanged"),
        n("stripe_errors"),
        n("emails_sent"),
        n("emails_waiting"),
        n("emails_failed"),
        n("emails_unknown")
    );
    run.finish(&ctx.printer, stop, &detail)
}

fn email_for<'a>(
    kind: Kind,
    sub: &SubscriptionRow,
    rendered: &'a email::Rendered,
    key: &'a str,
    id: &'a str,
    to: &'a str,
) -> NewEmail<'a> {
    NewEmail {
        dedupe_key: key,
        message_id: id,
        kind: kind.as_str(),
        subscription_id: Some(sub.id),
        to,
        subject: &rendered.subject,
        text: &rendered.text,
        html: &rendered.html,
    }
}

/// A change was applied: count it, and say so under cron.
fn counted(ctx: &Ctx, run: &mut JobRun, counter: &str, sub: &SubscriptionRow, what: &str) {
    run.add(counter, 1);
    run.counts.total += 1;
    run.counts.ok += 1;
    if ctx.printer.item_lines() {
        tracing::info!("subscription `{}` ({}): {what}", sub.external_id, sub.email);
    }
}

fn expiring(ctx: &Ctx, run: &mut JobRun, now: &str, until: &str) -> Result<()> {
    let cfg = &ctx.loaded.config.renew;
    let now_t = instant(now)?;
    for sub in run.store.expiring(now, until)? {
        let end = instant(&sub.current_period_end)?;
        let start = instant(&sub.current_period_start)?;
        // Whole days left, rounded up: a period ending in 2 hours "expires in 1 day".
        let days = ((end - now_t).num_seconds() + 86_399) / 86_400;
        let rendered = email::render(Kind::Expiring, &sub, &cfg.app_name, days, (start, end))?;
        let key = format!("expiring:{}:{}", sub.id, sub.current_period_end);
        let id = email::message_id(Kind::Expiring, sub.id, end, &cfg.message_id_domain);
        let changed = run.store.apply_change(
            &Change {
                subscription_id: sub.id,
                status: None,
                period: None,
                warned_period_end: Some(&sub.current_period_end),
                remove_plan_of: None,
                audits: vec![Audit {
                    entity: "subscription",
                    entity_id: sub.id,
                    action: "expiring_warned",
                    before: json!({"warned_period_end": null}).to_string(),
                    after: json!({"warned_period_end": sub.current_period_end}).to_string(),
                    reason: &format!("the period ends in {days} day(s)"),
                }],
                email: Some(email_for(
                    Kind::Expiring,
                    &sub,
                    &rendered,
                    &key,
                    &id,
                    &sub.email,
                )),
            },
            run.run_id,
            now,
        )?;
        if changed {
            counted(
                ctx,
                run,
                "warned",
                &sub,
                &format!("expires in {days} day(s); warning queued"),
            );
        }
    }
    Ok(())
}

fn expired(ctx: &Ctx, run: &mut JobRun, now: &str, stripe_cutoff: &str) -> Result<()> {
    let cfg = &ctx.loaded.config.renew;
    for sub in run.store.expired(now, stripe_cutoff)? {
        let end = instant(&sub.current_period_end)?;
        let start = instant(&sub.current_period_start)?;
        let rendered = email::render(Kind::Expired, &sub, &cfg.app_name, 0, (start, end))?;
        let key = format!("expired:{}:{}", sub.id, sub.current_period_end);
        let id = email::message_id(Kind::Expired, sub.id, end, &cfg.message_id_domain);
        let changed = run.store.apply_change(
            &Change {
                subscription_id: sub.id,
                status: Some("inactive"),
                period: None,
                warned_period_end: None,
                remove_plan_of: Some((sub.user_id, sub.plan_id)),
                audits: vec![
                    Audit {
                        entity: "subscription",
                        entity_id: sub.id,
                        action: "expired",
                        before: json!({"status": sub.status}).to_string(),
                        after: json!({"status": "inactive"}).to_string(),
                        reason: &format!(
                            "the period ended at {} and is not set to cancel at its end",
                            sub.current_period_end
                        ),
                    },
                    Audit {
                        entity: "user",
                        entity_id: sub.user_id,
                        action: "plan_removed",
                        before: json!({"plan_id": sub.plan_id}).to_string(),
                        after: json!({"plan_id": null}).to_string(),
                        reason: "the subscription expired",
                    },
                ],
                email: Some(email_for(
                    Kind::Expired,
                    &sub,
                    &rendered,
                    &key,
                    &id,
                    &sub.email,
                )),
            },
            run.run_id,
            now,
        )?;
        if changed {
            counted(
                ctx,
                run,
                "expired",
                &sub,
                "expired; made inactive, plan removed",
            );
        }
    }
    Ok(())
}

async fn stripe_step(
    ctx: &Ctx,
    run: &mut JobRun,
    client: Arc<StripeClient>,
    day_start: DateTime<Utc>,
    day_end: DateTime<Utc>,
) -> Result<()> {
    let cfg = &ctx.loaded.config;
    let due = run
        .store
        .stripe_due(&clock::to_store(day_start), &clock::to_store(day_end))?;
    run.plan(due.len());
    let bar = ctx.printer.progress(due.len() as u64, "stripe");
    let mut queue = due.into_iter();
    let mut inflight = tokio::task::JoinSet::new();
    let mut stop = None;
    loop {
        while inflight.len() < cfg.stripe.concurrency as usize
            && stop.is_none()
            && !run.cancel.is_cancelled()
        {
            let Some(sub) = queue.next() else { break };
            let client = client.clone();
            inflight.spawn(async move {
                let id = sub.gateway_subscription_id.clone().unwrap_or_default();
                let answer = client.subscription(&id).await;
                (sub, answer)
            });
        }
        let Some(done) = inflight.join_next().await else {
            break;
        };
        let (sub, answer) = done?;
        bar.inc(1);
        // An answer about the subscription says the key was taken.
        if matches!(answer, Ok(_) | Err(StripeError::Permanent(_))) {
            run.credentials_checked("stripe_credentials", None);
        }
        match answer {
            Ok(s) => record_stripe(ctx, run, &sub, &s)?,
            Err(StripeError::Stop(m)) => {
                run.credentials_checked(
                    "stripe_credentials",
                    Some("Stripe refused the secret key".into()),
                );
                if stop.is_none() {
                    stop = Some(m);
                }
            }
            Err(e) => {
                run.add("stripe_errors", 1);
                run.counts.total += 1;
                run.counts.failed += 1;
                tracing::warn!("subscription `{}`: {e}", sub.external_id);
                run.event("warn", format!("subscription `{}`: {e}", sub.external_id));
            }
        }
    }
    ctx.printer.finish_progress(&bar);
    match stop {
        // Refused credentials are a configuration failure (exit 78), whatever else went well.
        Some(m) => Err(CodedError::config(m)),
        None => Ok(()),
    }
}

fn record_stripe(
    ctx: &Ctx,
    run: &mut JobRun,
    sub: &SubscriptionRow,
    s: &StripeSubscription,
) -> Result<()> {
    let cfg = &ctx.loaded.config.renew;
    let now = clock::to_store(ctx.clock.now());
    let current_end = instant(&sub.current_period_end)?;
    // Only `active` renews: `trialing` (and the rest) is not a paid period
    // (docs/src/reference/domain.md#subscriptions).
    let renewable = s.status == "active";
    match s.period {
        Some((start, end)) if renewable && end > current_end => {
            let (start_s, end_s) = (clock::to_store(start), clock::to_store(end));
            let rendered = email::render(Kind::Renewed, sub, &cfg.app_name, 0, (start, end))?;
            let key = format!("renewed:{}:{end_s}", sub.id);
            let id = email::message_id(Kind::Renewed, sub.id, end, &cfg.message_id_domain);
            let changed = run.store.apply_change(
                &Change {
                    subscription_id: sub.id,
                    status: None,
                    period: Some((&start_s, &end_s)),
                    warned_period_end: None,
                    remove_plan_of: None,
                    audits: vec![Audit {
                        entity: "subscription",
                        entity_id: sub.id,
                        action: "renewed",
                        before: json!({"current_period_start": sub.current_period_start, "current_period_end": sub.current_period_end}).to_string(),
                        after: json!({"current_period_start": start_s, "current_period_end": end_s}).to_string(),
                        reason: &format!("Stripe says `{}` with a period ending {end_s}", s.status),
                    }],
                    email: Some(email_for(Kind::Renewed, sub, &rendered, &key, &id, &sub.email)),
                },
                run.run_id,
                &now,
            )?;
            if changed {
                counted(ctx, run, "renewed", sub, &format!("renewed until {end_s}"));
            }
        }
        _ if !renewable => {
            // trialing, past_due, canceled, unpaid...: not a renewal; `expired` handles the end.
            run.store.audit(
                &Audit {
                    entity: "subscription",
                    entity_id: sub.id,
                    action: "not_renewed",
                    before: json!({"status": sub.status}).to_string(),
                    after: json!({"status": sub.status}).to_string(),
                    reason: &format!("Stripe says `{}`: not a renewal", s.status),
                },
                run.run_id,
                &now,
            )?;
            run.add("not_renewed", 1);
            run.counts.total += 1;
            run.counts.ok += 1;
            tracing::warn!(
                "subscription `{}` ({}): Stripe says `{}`; not renewed",
                sub.external_id,
                sub.email,
                s.status
            );
        }
        _ => {
            run.add("unchanged", 1);
            run.counts.total += 1;
            run.counts.ok += 1;
        }
    }
    Ok(())
}

async fn emails(ctx: &Ctx, run: &mut JobRun, mailer: &mut Mailer) -> Result<()> {
    let pending = run
        .store
        .pending_emails(ctx.loaded.config.renew.email_batch)?;
    let total = pending.len();
    for (i, e) in pending.into_iter().enumerate() {
        if run.cancel.is_cancelled() {
            break;
        }
        // One connection for the run: opened for the first email, again after an error. When
        // it cannot be opened, nothing is handed over and this email and the rest wait.
        let connected = mailer.connect().await;
        match &connected {
            Ok(()) if mailer.authenticates() => run.credentials_checked("smtp_credentials", None),
            Err(Unusable::Credentials(_)) => run.credentials_checked(
                "smtp_credentials",
                Some("the SMTP server refused the credentials of `[smtp] user`".into()),
            ),
            _ => {}
        }
        if let Err(why) = connected {
            let left = total - i;
            let m =
                format!("{why}; {left} email(s) wait for the next run (the state changes stand)");
            run.add("emails_waiting", left as i64);
            mailer.close().await;
            return match why {
                // Nothing is marked: every email stays `pending`, sent once the password is
                // fixed.
                Unusable::Credentials(_) => Err(CodedError::config(m)),
                Unusable::Unavailable(_) => {
                    tracing::warn!("{m}");
                    run.event("warn", m);
                    run.degraded = true;
                    Ok(())
                }
            };
        }
        let now = clock::to_store(ctx.clock.now());
        // Marked before the SMTP conversation: a process killed during it leaves `sending`,
        // which the next run reports as unknown instead of sending again.
        run.store
            .set_email_status(e.id, EmailStatus::Sending, None, &now)?;
        let mut outcome = mailer.send(&e).await;
        if let Outcome::NotSent(m) = &outcome {
            // The server cannot have it (the data was not written): once more, on a new
            // connection, e.g. after the server closed an idle one.
            tracing::debug!("email #{}: {m}; trying a new connection", e.id);
            if mailer.connect().await.is_ok() {
                outcome = mailer.send(&e).await;
            }
        }
        let now = clock::to_store(ctx.clock.now());
        run.counts.total += 1;
        match outcome {
            Outcome::Sent => {
                run.store
                    .set_email_status(e.id, EmailStatus::Sent, None, &now)?;
                run.add("emails_sent", 1);
                run.counts.ok += 1;
            }
            Outcome::Retry(m) | Outcome::NotSent(m) => {
                run.store
                    .set_email_status(e.id, EmailStatus::Pending, Some(&m), &now)?;
                run.add("emails_waiting", 1);
                run.counts.failed += 1;
                tracing::warn!(
                    "email #{} to {}: {m}; it waits for the next run",
                    e.id,
                    e.to
                );
            }
            Outcome::Failed(m) => {
                run.store
                    .set_email_status(e.id, EmailStatus::Failed, Some(&m), &now)?;
                run.add("emails_failed", 1);
                run.counts.failed += 1;
                tracing::warn!("email #{} to {}: {m}", e.id, e.to);
            }
            Outcome::Unknown(m) => {
                run.store
                    .set_email_status(e.id, EmailStatus::Unknown, Some(&m), &now)?;
                run.add("emails_unknown", 1);
                run.counts.failed += 1;
                tracing::warn!(
                    "email #{} to {}: {m} (check the mailbox, then `crm-jobs renew --resend {}` if it never arrived)",
                    e.id,
                    e.to,
                    e.id
                );
            }
        }
    }
    mailer.close().await;
    Ok(())
}
