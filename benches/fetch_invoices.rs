//! Benchmark of `fetch-invoices` against the sandbox (not a test): N contracts, a fixed latency
//! per request, and the figure set against the network-bound limit
//! `requests x latency / concurrency`.
//!
//! `cargo bench --bench fetch_invoices` (defaults: 1000 contracts, 50 ms, concurrency 16);
//! override with BENCH_CONTRACTS, BENCH_LATENCY_MS, BENCH_CONCURRENCY, BENCH_PDFS=1.

#![allow(clippy::print_stdout, reason = "a benchmark's figures are its output")]

mod common;

use std::process::Command;
use std::time::Instant;

use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Route, Sandbox, scenario};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let contracts = var("BENCH_CONTRACTS", 1000) as usize;
    let latency_ms = var("BENCH_LATENCY_MS", 50);
    let concurrency = var("BENCH_CONCURRENCY", 16);
    let pdfs = var("BENCH_PDFS", 0) == 1;

    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0).expect("sandbox");
    let today = crm_jobs::clock::Clock::from_env().expect("clock").today();
    let s = scenario::build(
        &sandbox.nio,
        contracts,
        today,
        scenario::Options { varied: false },
    );
    std::fs::write(dir.path().join("contracts.csv"), &s.contracts_csv).unwrap();
    let template = if pdfs {
        format!("pdf_url_template = \"{}\"\n", sandbox.nio_pdf_template())
    } else {
        String::new()
    };
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[store]\npath = \"crm.db\"\n[downloads]\ndir = \"downloads\"\n[nio]\nbase_url = \"{}\"\n{template}",
            sandbox.nio_base_url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_crm-jobs"))
            .args(args)
            .env("CRM_JOBS_CONFIG", dir.path().join("config.toml"))
            .env("CRM_JOBS_NIO_PASSPHRASE", DEFAULT_PASSPHRASE)
            .env_remove("CRM_JOBS_NOW")
            .current_dir(dir.path())
            .output()
            .expect("run crm-jobs");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["--quiet", "import", "contracts", "contracts.csv"]);
    // The import is not measured; the latency applies to the fetch only.
    sandbox.faults.set_latency(latency_ms, 0);
    let limit = contracts.to_string();
    let conc = concurrency.to_string();
    let started = Instant::now();
    let out = run(&[
        "--quiet",
        "--json",
        "fetch-invoices",
        "--limit",
        &limit,
        "--concurrency",
        &conc,
        "--origin",
        "manual",
    ]);
    let wall = started.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let requests: u64 = [
        Route::NioParams,
        Route::NioSession,
        Route::NioDebts,
        Route::NioPdf,
    ]
    .iter()
    .map(|r| sandbox.faults.seen(*r))
    .sum();
    let bound = requests as f64 * latency_ms as f64 / 1000.0 / concurrency as f64;
    let peak_mb = summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0;
    println!(
        "fetch-invoices: {contracts} contracts, {requests} requests, {latency_ms} ms latency, concurrency {concurrency}{}",
        if pdfs { ", with PDFs" } else { "" }
    );
    println!(
        "  wall {wall:.2} s | network-bound limit {bound:.2} s | ratio {:.3} | peak memory {peak_mb:.1} MB | status {}",
        wall / bound,
        summary["status"]
    );
    println!(
        "  matched {} | contracts ok {} / failed {}",
        summary["counters"]["matched"], summary["items"]["ok"], summary["items"]["failed"]
    );
    common::row(
        "fetch-invoices",
        &format!(
            "{contracts} contracts, {requests} requests{}",
            if pdfs { " (PDFs)" } else { "" }
        ),
        wall,
        bound,
        &format!("network: {latency_ms} ms x {concurrency}"),
        peak_mb,
    );
}
