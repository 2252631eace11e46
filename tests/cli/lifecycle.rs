//! The run lifecycle shared by every job: locks, killed runs, signals, configuration errors.

use std::io::{BufRead, BufReader};

use crm_jobs::sandbox::Route;

use crate::support::*;

pub(crate) fn some_contracts(env: &Env, from: u32, count: u32) {
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in from..from + count {
        let c = cpf(n);
        csv.push_str(&format!("C{n},{},CLIENTE,2025-06-05\n", c.digits()));
        env.sandbox
            .nio
            .set_customer(c.digits(), vec![debt(&format!("{n}00"), &[1, 2])]);
    }
    env.import_contracts(&csv);
}

#[test]
fn a_second_start_exits_at_once_with_its_own_code() {
    let env = Env::new();
    some_contracts(&env, 40, 1);
    env.sandbox.faults.hold(Route::NioDebts);
    let first = env.spawn(&["fetch-invoices"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::NioDebts, 1, WAIT), 1);
    let second = env.run(&["fetch-invoices"]);
    assert_eq!(second.code, 75, "{second:?}");
    assert!(
        second
            .stderr
            .starts_with("error: `fetch-invoices` is already running (pid "),
        "{second:?}"
    );
    assert!(second.stderr.contains("run #1 since"), "{second:?}");
    env.sandbox.faults.release_all();
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0));
    let runs: i64 = env.query("SELECT COUNT(*) FROM runs");
    assert_eq!(runs, 1, "the refused start records no run");
}

#[test]
fn a_killed_run_is_marked_interrupted_and_leaves_no_partial_file() {
    let env = Env::new();
    some_contracts(&env, 50, 2);
    env.sandbox.faults.hold(Route::NioPdf);
    let mut child = env.spawn(&["fetch-invoices"]);
    assert!(env.sandbox.faults.wait_held(Route::NioPdf, 1, WAIT) >= 1);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    for f in files_under(&env.downloads()) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with(".crm-jobs-") || std::fs::read(&f).unwrap().starts_with(b"%PDF-"),
            "partial file under a final name: {f:?}"
        );
    }
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("run #1 of `fetch-invoices` was left running by a process that died: marked `interrupted`"),
        "{out:?}"
    );
    let (status, error): (String, String) = env
        .db()
        .query_row("SELECT status, error FROM runs WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(status, "interrupted");
    assert!(error.contains("found by run #2"), "{error}");
    let matched: i64 = env.query(
        "SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched' AND pdf_sha256 IS NOT NULL",
    );
    assert_eq!(matched, 4);
    let ok: String = env.query("PRAGMA integrity_check");
    assert_eq!(ok, "ok");
}

#[test]
fn sigterm_stops_taking_items_and_records_interrupted() {
    let env = Env::with_nio("concurrency = 1");
    some_contracts(&env, 60, 3);
    env.sandbox.faults.hold(Route::NioDebts);
    let mut child = env.spawn(&["fetch-invoices"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::NioDebts, 1, WAIT), 1);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Wait until the job says it got the signal, then let the request in flight finish.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains("received SIGTERM") {
            break;
        }
    }
    assert!(
        seen.contains("received SIGTERM: finishing the items in flight, taking no new ones"),
        "{seen}"
    );
    env.sandbox.faults.release_all();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(143), "{seen}{rest}");
    assert!(
        rest.contains("fetch-invoices run #1: interrupted"),
        "{rest}"
    );
    let (status, total): (String, i64) = env
        .db()
        .query_row("SELECT status, items_total FROM runs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((status.as_str(), total), ("interrupted", 1));
    let untouched: i64 = env.query("SELECT COUNT(*) FROM contracts WHERE last_fetch_at IS NULL");
    assert_eq!(untouched, 2);
}

#[test]
fn an_unknown_config_key_names_the_key_and_the_file() {
    let env = Env::new();
    env.write_config("concurency = 4");
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 78, "{out:?}");
    let file = env.path("config.toml");
    assert!(
        out.stderr.starts_with(&format!(
            "error: invalid config file `{}`: `[nio] concurency`: unknown field `concurency`",
            file.display()
        )),
        "{out:?}"
    );
}

#[test]
fn an_unknown_environment_override_is_an_error_too() {
    let env = Env::new();
    let out = env
        .cmd(&["config", "check"])
        .env("CRM_JOBS_NIO_CONCURENCY", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains(
            "invalid environment variable `CRM_JOBS_NIO_CONCURENCY`: `[nio] concurency`: unknown field `concurency`"
        ),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_win_and_config_check_hides_secrets() {
    let env = Env::new();
    let out = env
        .cmd(&["config", "check"])
        .env("CRM_JOBS_NIO_CONCURRENCY", "9")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("concurrency = 9"), "{stdout}");
    assert!(stdout.contains("# overridden by the environment: CRM_JOBS_NIO_CONCURRENCY"));
    assert!(stdout.contains("CRM_JOBS_NIO_PASSPHRASE set (redacted)"));
    assert!(!stdout.contains(crm_jobs::sandbox::DEFAULT_PASSPHRASE));
    // Relative paths in the file are taken from the file's folder, not the working directory.
    assert!(
        stdout.contains(&format!(
            "path = \"{}\"",
            env.path("store/crm.db").display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_missing_passphrase_is_a_config_error() {
    let env = Env::new();
    let out = env
        .cmd(&["fetch-invoices"])
        .env_remove("CRM_JOBS_NIO_PASSPHRASE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("the Nio passphrase is not set: export `CRM_JOBS_NIO_PASSPHRASE`"),
        "{stderr}"
    );
}

#[test]
fn the_passphrase_can_come_from_a_file() {
    let env = Env::new();
    some_contracts(&env, 70, 1);
    std::fs::write(
        env.path("pass"),
        format!("{}\n", crm_jobs::sandbox::DEFAULT_PASSPHRASE),
    )
    .unwrap();
    let out = env
        .cmd(&["fetch-invoices"])
        .env_remove("CRM_JOBS_NIO_PASSPHRASE")
        .env("CRM_JOBS_NIO_PASSPHRASE_FILE", env.path("pass"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let env = Env::new();
    some_contracts(&env, 80, 1);
    let out = env.run(&["--log-format", "json", "fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    for line in out.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v.get("level").is_some());
    }
}

#[test]
fn retry_does_not_start_while_fetch_invoices_works_on_the_same_invoices() {
    let env = Env::new();
    some_contracts(&env, 90, 1);
    env.sandbox.faults.hold(Route::NioDebts);
    let first = env.spawn(&["fetch-invoices"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::NioDebts, 1, WAIT), 1);
    let retry = env.run(&["retry"]);
    env.sandbox.faults.release_all();
    assert_eq!(retry.code, 75, "{retry:?}");
    assert!(
        retry
            .stderr
            .starts_with("error: `fetch-invoices` is running on the same data (pid "),
        "{retry:?}"
    );
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let env = Env::new();
    for args in [
        &["fetch-invoices", "--safra", "2025-13"][..],
        &["fetch-invoices", "--concurrency", "0"],
        &["retry", "--max-attempts", "0"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
    let out = env.run(&["fetch-invoices", "--contract", "NOPE"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("contract `NOPE` is not in the store"),
        "{out:?}"
    );
}
