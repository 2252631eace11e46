//! Benchmark of `download-boletos` against the sandbox (not a test): N clients with one boleto
//! each, a fixed latency per request, and the figure set against the network-bound limit
//! `requests x latency / sessions`.
//!
//! `cargo bench --bench download_boletos` (defaults: 500 clients, 50 ms, 8 sessions); override
//! with BENCH_CLIENTS, BENCH_LATENCY_MS, BENCH_CONCURRENCY.

#![allow(clippy::print_stdout, reason = "a benchmark's figures are its output")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Datelike;
use crm_jobs::domain::cpf::Cpf;
use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Route, Sandbox, SbBoleto, SbQuota};
use crm_jobs::store::{ClientImport, Store};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = var("BENCH_CLIENTS", 500) as u32;
    let latency_ms = var("BENCH_LATENCY_MS", 50);
    let concurrency = var("BENCH_CONCURRENCY", 8);
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0).expect("sandbox");
    sandbox.canopus.add_user("24627", "senha");
    let today = crm_jobs::clock::Clock::from_env().expect("clock").today();
    let due = today.with_day(10).expect("day 10");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[store]\npath = \"crm.db\"\n[downloads]\ndir = \"downloads\"\n[canopus]\nbase_url = \"{}\"\n",
            sandbox.canopus_base_url()
        ),
    )
    .unwrap();
    {
        let mut store = Store::open(&dir.path().join("crm.db")).expect("store");
        let now = "2025-01-01T00:00:00.000Z";
        let consultant = store.ensure_consultant("BENCH", "BENCH", now).unwrap();
        let point = store.ensure_sales_point("17.308", now).unwrap();
        for i in 0..clients {
            let cpf = Cpf::from_base(200_000_000 + i * 7919);
            let name = format!("CLIENTE NUMERO {i}");
            store
                .upsert_client(
                    &ClientImport {
                        cpf: cpf.digits(),
                        name: &name,
                        raw_name: &name,
                        consultant_id: consultant,
                        sales_point_id: Some(point),
                        quota: None,
                        situacao: Some("em_dia"),
                        value_centavos: None,
                        source: "bench",
                    },
                    now,
                )
                .unwrap();
            sandbox.canopus.set_client(
                cpf.digits(),
                vec![SbQuota {
                    group: format!("{:06}", 1000 + i),
                    quota: "0001".into(),
                    name,
                    boletos: vec![SbBoleto::new(due, 45_000, u64::from(i))],
                }],
            );
        }
    }
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_crm-jobs"));
        c.args(args)
            .current_dir(dir.path())
            .env("CRM_JOBS_CONFIG", dir.path().join("config.toml"))
            .env("CRM_JOBS_FERNET_KEY", KEY)
            .env_remove("CRM_JOBS_NOW");
        c
    };
    let mut set = cmd(&[
        "--quiet",
        "credentials",
        "set",
        "--ponto-venda",
        "17.308",
        "--usuario",
        "24627",
        "--password-stdin",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .expect("credentials set");
    set.stdin.take().unwrap().write_all(b"senha\n").unwrap();
    assert!(set.wait().unwrap().success());

    sandbox.faults.set_latency(latency_ms, 0);
    let conc = concurrency.to_string();
    let started = Instant::now();
    let out = cmd(&[
        "--quiet",
        "--json",
        "download-boletos",
        "--ponto-venda",
        "17.308",
        "--concurrency",
        &conc,
    ])
    .output()
    .expect("run crm-jobs");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let requests: u64 = [Route::CanopusLogin, Route::CanopusPage, Route::CanopusPdf]
        .iter()
        .map(|r| sandbox.faults.seen(*r))
        .sum();
    let bound = requests as f64 * latency_ms as f64 / 1000.0 / concurrency as f64;
    println!(
        "download-boletos: {clients} clients, {requests} requests, {latency_ms} ms latency, {concurrency} sessions"
    );
    println!(
        "  wall {wall:.2} s | network-bound limit {bound:.2} s | ratio {:.3} | peak memory {:.1} MB | status {}",
        wall / bound,
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        summary["status"]
    );
    println!(
        "  files {} | success {}",
        summary["counters"]["files"], summary["counters"]["success"]
    );
    common::row(
        "download-boletos",
        &format!("{clients} clients, {requests} requests"),
        wall,
        bound,
        &format!("network: {latency_ms} ms x {concurrency}"),
        summary["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    );
}
