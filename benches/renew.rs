//! Benchmark of `renew --step stripe` (not a test): N subscriptions whose period ends today,
//! each asked of the sandbox's Stripe with a fixed latency, against the network-bound limit
//! `requests x latency / concurrency`.
//!
//! `cargo bench --bench renew` (defaults: 10,000 subscriptions, 50 ms, concurrency 16); knobs
//! BENCH_SUBSCRIPTIONS, BENCH_LATENCY_MS, BENCH_CONCURRENCY.

mod common;

use std::process::Command;
use std::time::Instant;

use chrono::{Duration, Utc};
use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Route, Sandbox, stripe};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
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
        let out = Command::new(env!("CARGO_BIN_EXE_crm-jobs"))
            .args(args)
            .current_dir(dir.path())
            .env("CRM_JOBS_CONFIG", dir.path().join("config.toml"))
            .env("CRM_JOBS_STRIPE_SECRET_KEY", stripe::SECRET_KEY)
            .env_remove("CRM_JOBS_NOW")
            .output()
            .expect("run crm-jobs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
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
