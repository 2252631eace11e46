//! Benchmarks of `renew` (not tests), against the sandbox.
//!
//! `renew --step stripe`: N subscriptions whose period ends today, each asked of the sandbox's
//! Stripe with a fixed latency, against the network-bound limit `requests x latency /
//! concurrency`. Knobs BENCH_SUBSCRIPTIONS (10,000), BENCH_LATENCY_MS (50), BENCH_CONCURRENCY
//! (16).
//!
//! `renew --step emails`: M queued emails sent to the sandbox's SMTP server (STARTTLS with its
//! self-signed certificate pinned, AUTH), which waits a fixed latency before every flush of
//! replies, against the bound of one open connection: `emails x round trips per message x
//! latency`, 2 round trips with PIPELINING (MAIL, RCPT and DATA together; then the data).
//! Knobs BENCH_EMAILS (200), BENCH_SMTP_LATENCY_MS (10), BENCH_SMTP_TLS (`starttls` or `none`).
//!
//! `cargo bench --bench renew`; BENCH_ONLY=stripe or BENCH_ONLY=emails runs one.

#![allow(clippy::print_stdout, reason = "a benchmark's figures are its output")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, Utc};
use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Route, Sandbox, stripe};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "stripe" {
        stripe();
    }
    if only.is_empty() || only == "emails" {
        emails();
    }
}

/// Runs crm-jobs in `dir` with its config; panics unless it succeeds.
fn crm_jobs(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crm-jobs"))
        .args(args)
        .current_dir(dir)
        .env("CRM_JOBS_CONFIG", dir.join("config.toml"))
        .envs(env.iter().copied())
        .env_remove("CRM_JOBS_NOW")
        .output()
        .expect("run crm-jobs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stripe() {
    let n = var("BENCH_SUBSCRIPTIONS", 10_000);
    let latency_ms = var("BENCH_LATENCY_MS", 50);
    let concurrency = var("BENCH_CONCURRENCY", 16);
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0).expect("sandbox");
    // Ends in a minute: "today" in São Paulo unless the bench starts at 23:59 there.
    let now = Utc::now();
    let end = now + Duration::seconds(60);
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut lines =
        String::from("{\"type\": \"plan\", \"id\": \"pro\", \"name\": \"Pro\", \"price\": 4990}\n");
    for i in 0..n {
        lines.push_str(&format!(
            "{{\"type\": \"user\", \"id\": \"u{i}\", \"name\": \"Cliente {i}\", \"email\": \"c{i}@example.com\", \"plan\": \"pro\"}}\n\
             {{\"type\": \"subscription\", \"id\": \"s{i}\", \"user\": \"u{i}\", \"plan\": \"pro\", \"status\": \"active\", \"current_period_start\": \"{}\", \"current_period_end\": \"{}\", \"gateway_subscription_id\": \"sub_{i}\"}}\n",
            iso(end - Duration::days(30)),
            iso(end)
        ));
        sandbox.stripe.set(
            &format!("sub_{i}"),
            "active",
            end.timestamp(),
            (end + Duration::days(30)).timestamp(),
        );
    }
    std::fs::write(dir.path().join("subs.jsonl"), lines).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[store]\npath = \"crm.db\"\n[stripe]\nbase_url = \"{}\"\nconcurrency = {concurrency}\n",
            sandbox.stripe_base_url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        crm_jobs(
            dir.path(),
            args,
            &[("CRM_JOBS_STRIPE_SECRET_KEY", stripe::SECRET_KEY)],
        )
    };
    run(&["--quiet", "import", "subscriptions", "subs.jsonl"]);
    sandbox.faults.set_latency(latency_ms, 0);
    let started = Instant::now();
    let out = run(&["--quiet", "--json", "renew", "--step", "stripe"]);
    let wall = started.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let requests = sandbox.faults.seen(Route::Stripe);
    let bound = requests as f64 * latency_ms as f64 / 1000.0 / concurrency as f64;
    println!(
        "renew --step stripe: {n} subscriptions, {requests} requests, {latency_ms} ms latency, concurrency {concurrency}"
    );
    println!(
        "  wall {wall:.2} s | network-bound limit {bound:.2} s | ratio {:.3} | peak memory {:.1} MB | renewed {}",
        wall / bound,
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        summary["counters"]["renewed"]
    );
    common::row(
        "renew --step stripe",
        &format!("{n} subscriptions, {requests} requests"),
        wall,
        bound,
        &format!("network: {latency_ms} ms x {concurrency}"),
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );
}

fn emails() {
    let n = var("BENCH_EMAILS", 200);
    let latency_ms = var("BENCH_SMTP_LATENCY_MS", 10);
    let tls = std::env::var("BENCH_SMTP_TLS").unwrap_or_else(|_| "starttls".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0).expect("sandbox");
    // Periods ending in two days: the `expiring` step queues one warning each.
    let now = Utc::now();
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut lines =
        String::from("{\"type\": \"plan\", \"id\": \"pro\", \"name\": \"Pro\", \"price\": 4990}\n");
    for i in 0..n {
        lines.push_str(&format!(
            "{{\"type\": \"user\", \"id\": \"u{i}\", \"name\": \"Cliente {i}\", \"email\": \"c{i}@example.com\", \"plan\": \"pro\"}}\n\
             {{\"type\": \"subscription\", \"id\": \"s{i}\", \"user\": \"u{i}\", \"plan\": \"pro\", \"status\": \"active\", \"current_period_start\": \"{}\", \"current_period_end\": \"{}\", \"gateway\": \"manual\"}}\n",
            iso(now - Duration::days(28)),
            iso(now + Duration::days(2))
        ));
    }
    std::fs::write(dir.path().join("subs.jsonl"), lines).unwrap();
    std::fs::write(dir.path().join("smtp.pem"), sandbox.smtp.certificate_pem()).unwrap();
    sandbox.smtp.set_require_tls(tls != "none");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[store]\npath = \"crm.db\"\n[renew]\nemail_batch = {n}\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\nca_file = \"smtp.pem\"\ntls_server_name = \"localhost\"\nuser = \"{}\"\n",
            sandbox.smtp.addr().port(),
            crm_jobs::sandbox::SMTP_USER
        ),
    )
    .unwrap();
    let env = [("CRM_JOBS_SMTP_PASSWORD", crm_jobs::sandbox::SMTP_PASSWORD)];
    crm_jobs(
        dir.path(),
        &["--quiet", "import", "subscriptions", "subs.jsonl"],
        &env,
    );
    crm_jobs(
        dir.path(),
        &["--quiet", "renew", "--step", "expiring"],
        &env,
    );
    sandbox
        .smtp
        .set_reply_latency(StdDuration::from_millis(latency_ms));
    let started = Instant::now();
    let out = crm_jobs(
        dir.path(),
        &["--quiet", "--json", "renew", "--step", "emails"],
        &env,
    );
    let wall = started.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let sent = sandbox.smtp.received().len();
    assert_eq!(sent as u64, n, "every email sent once");
    // With PIPELINING: MAIL, RCPT and DATA in one round trip, the data in another.
    let round_trips = 2.0;
    let bound = n as f64 * round_trips * latency_ms as f64 / 1000.0;
    println!(
        "renew --step emails: {n} emails, {latency_ms} ms latency on every SMTP reply, tls {tls}, {} connection(s), {} login(s), {} round trips",
        sandbox.smtp.connections(),
        sandbox.smtp.logins(),
        sandbox.smtp.flushes()
    );
    println!(
        "  wall {wall:.2} s ({:.1} messages/s, {:.1} ms each) | bound of one open connection {bound:.2} s ({:.1} messages/s) | ratio {:.3} | peak memory {:.1} MB",
        n as f64 / wall,
        wall * 1000.0 / n as f64,
        if bound > 0.0 {
            n as f64 / bound
        } else {
            f64::INFINITY
        },
        if bound > 0.0 { wall / bound } else { 0.0 },
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );
    common::row(
        "renew --step emails",
        &format!("{n} emails"),
        wall,
        bound,
        &format!("SMTP: {latency_ms} ms x 2 round trips"),
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );
}
