//! Benchmarks of the CRM outbox (not tests):
//! 1. `enqueue` of 100,000 JSON lines;
//! 2. `sync-queue` draining 10,000 items with no limit and 20 ms latency, against the
//!    network-bound limit `items x latency / concurrency` (target: at least 0.9 of
//!    `concurrency / latency` items a second);
//! 3. `sync-queue` under the CRM's limit, scaled down (100 a second instead of 100 a minute):
//!    the sandbox counts any 429 (target: none) and the achieved rate is set against the limit;
//! 4. `sync-queue` against a CRM whose real limit (30 a minute) is below the configured one
//!    (100 a minute), so that it answers 429 with `Retry-After`: 60 creates against what the
//!    real limit allows (target: within 1.3x), and the achieved rate;
//! 5. `cleanup` of 1,000,000 old log rows interleaved with 1,000,000 recent ones, and the
//!    file's size before and after.
//!
//! `cargo bench --bench sync_queue`; knobs BENCH_ITEMS (10000), BENCH_LATENCY_MS (20),
//! BENCH_CONCURRENCY (16), BENCH_LIMITED_ITEMS (1000), BENCH_ENQUEUE (100000),
//! BENCH_CLEANUP (1000000), BENCH_429_ITEMS (60), BENCH_429_SCALE (10).

#![allow(clippy::print_stdout, reason = "a benchmark's figures are its output")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Route, Sandbox, crm};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new(sandbox: &Sandbox, crm_section: &str) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[store]\npath = \"crm.db\"\n[crm]\nbase_url = \"{}\"\n{crm_section}\n",
                sandbox.crm_base_url()
            ),
        )
        .unwrap();
        Bench { dir }
    }

    fn run(&self, args: &[&str]) -> (f64, serde_json::Value) {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_crm-jobs"))
            .args(args)
            .current_dir(self.dir.path())
            .env("CRM_JOBS_CONFIG", self.dir.path().join("config.toml"))
            .env("CRM_JOBS_CRM_ACCESS_TOKEN", crm::ACCESS_TOKEN)
            .env("CRM_JOBS_CRM_SECRET_ACCESS_TOKEN", crm::SECRET_TOKEN)
            .env_remove("CRM_JOBS_NOW")
            .output()
            .expect("run crm-jobs");
        let wall = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            wall,
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        )
    }

    fn enqueue(&self, n: u64) -> f64 {
        let mut lines = String::new();
        for i in 0..n {
            lines.push_str(&format!(
                "{{\"entity\": \"produtos\", \"record_id\": \"{i}\", \"action\": \"upsert\", \"payload\": {{\"nome\": \"Produto {i}\", \"valor_venda\": \"99.90\"}}}}\n"
            ));
        }
        std::fs::write(self.dir.path().join("changes.jsonl"), lines).unwrap();
        self.run(&["--quiet", "--json", "enqueue", "changes.jsonl"])
            .0
    }
}

fn main() {
    let items = var("BENCH_ITEMS", 10_000);
    let latency_ms = var("BENCH_LATENCY_MS", 20);
    let concurrency = var("BENCH_CONCURRENCY", 16);
    let limited = var("BENCH_LIMITED_ITEMS", 1_000);
    let big = var("BENCH_ENQUEUE", 100_000);
    let cleanup_rows = var("BENCH_CLEANUP", 1_000_000);
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0).expect("sandbox");

    // 1. Enqueue.
    let b = Bench::new(&sandbox, "");
    let wall = b.enqueue(big);
    println!(
        "enqueue: {big} lines in {wall:.2} s ({:.0} lines/s)",
        big as f64 / wall
    );

    // 2. No limit, fixed latency.
    let b = Bench::new(
        &sandbox,
        &format!("rate_limit_per_minute = 0\nconcurrency = {concurrency}"),
    );
    b.enqueue(items);
    sandbox.faults.set_latency(latency_ms, 0);
    let before = sandbox.faults.seen(Route::Crm);
    let batch = items.to_string();
    let (wall, summary) = b.run(&["--quiet", "--json", "sync-queue", "--batch", &batch]);
    let requests = sandbox.faults.seen(Route::Crm) - before;
    let bound = requests as f64 * latency_ms as f64 / 1000.0 / concurrency as f64;
    let ideal = concurrency as f64 * 1000.0 / latency_ms as f64;
    println!(
        "sync-queue, no limit: {items} items, {requests} requests, {latency_ms} ms latency, concurrency {concurrency}"
    );
    println!(
        "  wall {wall:.2} s | network-bound limit {bound:.2} s | ratio {:.3} | {:.0} items/s = {:.2} of concurrency/latency | peak memory {:.1} MB | done {}",
        wall / bound,
        requests as f64 / wall,
        requests as f64 / wall / ideal,
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        summary["counters"]["done"]
    );
    common::row(
        "sync-queue",
        &format!("{items} items, {requests} requests"),
        wall,
        bound,
        &format!("network: {latency_ms} ms x {concurrency}"),
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );
    sandbox.faults.set_latency(0, 0);

    // 3. Under the limit, scaled down: 100 a second at the CRM, 6,000 a minute configured.
    let b = Bench::new(&sandbox, "rate_limit_per_minute = 6000\nconcurrency = 8");
    b.enqueue(limited);
    sandbox.crm.set_limit(100, Duration::from_secs(1));
    let rejected = sandbox.crm.rejected_429();
    let batch = limited.to_string();
    let (wall, summary) = b.run(&["--quiet", "--json", "sync-queue", "--batch", &batch]);
    let rate = limited as f64 / wall;
    println!(
        "sync-queue, limited: {limited} items at 100/s (100/min scaled 60x): wall {wall:.2} s | {rate:.1} items/s = {:.3} of the limit | 429 answers: {} | done {}",
        rate / 100.0,
        sandbox.crm.rejected_429() - rejected,
        summary["counters"]["done"]
    );
    common::row(
        "sync-queue (rate-limited)",
        &format!("{limited} items"),
        wall,
        limited as f64 / 100.0,
        "rate: 100/s",
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );

    // 4. The CRM's real limit below the configured one: 30 a minute against 100, time scaled
    //    down `scale` times. Not 60 times as above: `Retry-After` is whole seconds, and one
    //    second of rounding would stand for a whole real minute.
    let items = var("BENCH_429_ITEMS", 60);
    let scale = var("BENCH_429_SCALE", 10).max(1);
    let (real, configured) = (30, 100);
    let window = Duration::from_secs(60) / scale as u32;
    let b = Bench::new(
        &sandbox,
        &format!(
            "rate_limit_per_minute = {}\nconcurrency = 4",
            configured * scale
        ),
    );
    b.enqueue(items);
    sandbox.crm.set_limit(real as usize, window);
    let rejected = sandbox.crm.rejected_429();
    // A request answered 429 counts against `--batch`: room for them, as the default batch
    // (100) leaves for 60 items.
    let batch = (items * 2).to_string();
    let (wall, summary) = b.run(&["--quiet", "--json", "sync-queue", "--batch", &batch]);
    let allowed = allowed_secs(
        items,
        real,
        window.as_secs_f64(),
        60.0 / (configured * scale) as f64,
    );
    // In real minutes: what was achieved, and what the CRM's limit allows from an idle window.
    let achieved = items as f64 / wall * 60.0 / scale as f64;
    let allowed_rate = items as f64 / allowed * 60.0 / scale as f64;
    println!(
        "sync-queue, CRM limit {real}/min under a configured {configured}/min (time scaled {scale}x): {items} creates in {wall:.2} s | the real limit allows {allowed:.2} s | ratio {:.3} (target 1.3) | {achieved:.1}/min achieved of {allowed_rate:.1}/min allowed (real minutes; {real}/min from an idle window) | 429 answers: {} | done {}",
        wall / allowed,
        sandbox.crm.rejected_429() - rejected,
        summary["counters"]["done"]
    );
    assert_eq!(summary["counters"]["done"], items, "every create done");
    common::row(
        "sync-queue (CRM limit below config)",
        &format!("{items} items"),
        wall,
        allowed,
        &format!("rate: {real}/min real, {configured}/min configured, {scale}x"),
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );

    // 5. Cleanup of old log rows, interleaved with as many recent ones (kept), then the file
    // gives its free pages back.
    let b = Bench::new(&sandbox, "");
    b.enqueue(1);
    let path = b.dir.path().join("crm.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
         INSERT INTO sync_log (item_id, at, request, status, duration_ms)
         SELECT 1, CASE i % 2 WHEN 0 THEN '2020-01-01T00:00:00.000Z' ELSE '2099-01-01T00:00:00.000Z' END,
                'POST /produtos', 200, 20 FROM n;",
        cleanup_rows * 2
    ))
    .unwrap();
    drop(db);
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(&path);
    let (wall, summary) = b.run(&["--quiet", "--json", "cleanup"]);
    let after = size(&path);
    println!(
        "cleanup: {} of {} interleaved rows in {wall:.2} s ({:.0} rows/s), batches of 1000; file {:.1} MB -> {:.1} MB ({} bytes given back)",
        summary["counters"]["sync_log"],
        cleanup_rows * 2,
        cleanup_rows as f64 / wall,
        before as f64 / 1e6,
        after as f64 / 1e6,
        summary["counters"]["bytes_given_back"]
    );
}

/// The earliest the last of `items` requests can be sent against a CRM that takes `per_window`
/// requests in any `window` seconds, by a client that spaces them `spacing` seconds apart: each
/// goes at the later of its turn and the window's room.
fn allowed_secs(items: u64, per_window: u64, window: f64, spacing: f64) -> f64 {
    let mut at: Vec<f64> = Vec::new();
    for i in 0..items as usize {
        let turn = at.last().map_or(0.0, |t| t + spacing);
        let room = i
            .checked_sub(per_window as usize)
            .map_or(0.0, |j| at[j] + window);
        at.push(turn.max(room));
    }
    at.last().copied().unwrap_or(0.0)
}
