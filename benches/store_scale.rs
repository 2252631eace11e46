//! Benchmark of a store of a million rows (not a test), each figure against its target
//! (issue 15):
//! 1. `import contracts` of 100,000 contracts, with their 1,000,000 expected invoices
//!    (target: under 10 s);
//! 2. `export invoices` of those 1,000,000 invoice rows to a file, in CSV and in JSON: the
//!    peak memory of the process (target: under 50 MB, whatever the row count; exports that
//!    build the whole output in memory are far above it, and the figure is printed as it is);
//! 3. `cleanup` of 1,000,000 old rows interleaved row by row with 1,000,000 recent ones (kept):
//!    request log, finished queue items and runs, in the same store (target: under 10 s), with
//!    the file's size before and after and the bytes given back.
//!
//! Every command is the release binary in its own process; its peak memory is the kernel's
//! count for it (`wait4`). `cargo bench --bench store_scale`; `STORE_SCALE=0.1` (or any
//! fraction) scales every count down for a quick run. The targets are not failures: the
//! benchmark prints each figure, its target, and `OVER TARGET` when it misses.
#![allow(clippy::print_stdout, reason = "a benchmark's figures are its output")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crm_jobs::domain::cpf::Cpf;

/// What one command took.
struct Measured {
    wall: f64,
    peak_mb: f64,
    stdout: String,
}

/// Runs `crm-jobs ARGS` in `dir` and measures its wall time and peak memory; panics unless it
/// exits 0.
#[allow(
    unsafe_code,
    reason = "wait4 for the child's peak memory: no safe API gives it"
)]
fn run(dir: &Path, args: &[&str]) -> Measured {
    use std::os::unix::process::ExitStatusExt;
    let (out_path, err_path) = (dir.join("bench.out"), dir.join("bench.err"));
    let started = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped below by wait4")]
    let child = Command::new(env!("CARGO_BIN_EXE_crm-jobs"))
        .args(args)
        .current_dir(dir)
        .env("CRM_JOBS_CONFIG", dir.join("config.toml"))
        .env_remove("CRM_JOBS_NOW")
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run crm-jobs");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let wall = started.elapsed().as_secs_f64();
    let status = std::process::ExitStatus::from_raw(status);
    assert!(
        status.success(),
        "{args:?}: {status}: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    Measured {
        wall,
        peak_mb: usage.ru_maxrss as f64 / 1024.0,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
    }
}

/// Whether `value` is under `target`.
fn verdict(value: f64, target: f64) -> &'static str {
    if value < target {
        "within target"
    } else {
        "OVER TARGET"
    }
}

fn size_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

fn main() {
    let scale: f64 = std::env::var("STORE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0);
    let scaled = |n: f64| ((n * scale).round() as u64).max(1);
    let contracts = scaled(100_000.0);
    let cleanup_rows = scaled(1_000_000.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    std::fs::write(dir.join("config.toml"), "[store]\npath = \"crm.db\"\n").unwrap();
    let db = dir.join("crm.db");
    println!("store_scale: scale {scale} (STORE_SCALE)");

    // 1. Import. The operator's sheet: an amount and a service order on every row.
    let mut csv = String::from("contrato,os,cpf,nome,data_instalacao,safra,valor\n");
    for i in 0..contracts {
        csv.push_str(&format!(
            "{},OS-{i},{},CLIENTE {i} DA SILVA,2025-{:02}-{:02},,\"99,90\"\n",
            7_000_000 + i,
            Cpf::from_base(123_000_000 + i as u32 * 7).digits(),
            1 + i % 12,
            1 + i % 28
        ));
    }
    std::fs::write(dir.join("contracts.csv"), csv).unwrap();
    let m = run(
        dir,
        &["--quiet", "--json", "import", "contracts", "contracts.csv"],
    );
    let summary: serde_json::Value = serde_json::from_str(&m.stdout).expect("JSON summary");
    assert_eq!(summary["imported"], contracts, "{summary}");
    let invoices: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM invoices", [], |r| r.get(0))
        .unwrap();
    println!(
        "import contracts: {contracts} contracts ({invoices} expected invoices, {} rows) in {:.2} s (target < 10 s: {}) | {:.0} rows/s | peak memory {:.1} MB | file {:.1} MB",
        contracts as i64 + invoices,
        m.wall,
        verdict(m.wall, 10.0),
        (contracts as i64 + invoices) as f64 / m.wall,
        m.peak_mb,
        size_mb(&db)
    );
    common::row(
        "import contracts",
        &format!("{contracts} contracts, {invoices} invoices"),
        m.wall,
        10.0,
        "target",
        m.peak_mb,
    );

    // 2. Exports of every invoice row, to a file.
    for format in ["csv", "json"] {
        let out = format!("invoices.{format}");
        let m = run(
            dir,
            &[
                "--quiet", "export", "invoices", "--format", format, "--out", &out,
            ],
        );
        println!(
            "export invoices --format {format}: {invoices} rows in {:.2} s | peak memory {:.1} MB (target < 50 MB: {}) | file {:.1} MB",
            m.wall,
            m.peak_mb,
            verdict(m.peak_mb, 50.0),
            size_mb(&dir.join(&out))
        );
        common::row(
            &format!("export invoices ({format})"),
            &format!("{invoices} rows"),
            m.wall,
            0.0,
            "target: peak memory < 50 MB",
            m.peak_mb,
        );
        std::fs::remove_file(dir.join(&out)).ok();
    }

    // 3. Cleanup: old rows (2020) interleaved row by row with recent ones (now), in three
    // tables of three rules: half the request log, a quarter each finished queue items and runs.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let recent = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let old = "2020-01-01T00:00:00.000Z";
    let (logs, queue, runs) = (cleanup_rows / 2, cleanup_rows / 4, cleanup_rows / 4);
    let age = format!("CASE i % 2 WHEN 0 THEN '{old}' ELSE '{recent}' END");
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {l})
         INSERT INTO sync_log (item_id, at, request, status, duration_ms)
         SELECT i, {age}, 'POST /produtos', 200, 20 FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {q})
         INSERT INTO sync_queue (entity, record_id, action, payload, priority, status, created_at, finished_at)
         SELECT 'produtos', i, 'upsert', '{{\"nome\": \"Produto ' || i || '\"}}', 3, 'done', {age}, {age} FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {r})
         INSERT INTO runs (job, origin, pid, started_at, finished_at, status)
         SELECT 'sync-queue', 'automatic', 1, {age}, {age}, 'success' FROM n;
         COMMIT;",
        l = logs * 2,
        q = queue * 2,
        r = runs * 2,
    ))
    .unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(conn);
    let before = size_mb(&db);
    let m = run(dir, &["--quiet", "--json", "cleanup"]);
    let summary: serde_json::Value = serde_json::from_str(&m.stdout).expect("JSON summary");
    let removed = summary["counters"]["sync_log"].as_i64().unwrap_or(0)
        + summary["counters"]["queue_done"].as_i64().unwrap_or(0)
        + summary["counters"]["runs"].as_i64().unwrap_or(0);
    assert_eq!(removed as u64, logs + queue + runs, "{summary}");
    println!(
        "cleanup: {removed} old rows interleaved with {} recent ones ({logs} sync_log, {queue} queue_done, {runs} runs) in {:.2} s (target < 10 s: {}) | {:.0} rows/s | peak memory {:.1} MB | file {before:.1} MB -> {:.1} MB ({:.1} MB given back)",
        logs + queue + runs,
        m.wall,
        verdict(m.wall, 10.0),
        removed as f64 / m.wall,
        m.peak_mb,
        size_mb(&db),
        summary["counters"]["bytes_given_back"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    );
    common::row(
        "cleanup",
        &format!("{removed} of {} interleaved rows", removed * 2),
        m.wall,
        10.0,
        "target",
        m.peak_mb,
    );
}
