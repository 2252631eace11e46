//! The proving ground (issue 7): suites that cross all jobs. Crash (kill -9 at many points, then
//! run again, then check the invariants), concurrency (jobs at once on one store), faults (10%
//! transient errors and jittered latency everywhere) and secrets (never in logs, output, store).
//!
//! Each suite runs a few iterations by default, so that `cargo test` stays quick; set
//! `CRM_JOBS_FULL_SUITES=1` for many more (and `CRM_JOBS_CRASH_SEED=N` to vary the kill points).

use std::os::unix::fs::PermissionsExt as _;

use crm_jobs::sandbox::Route;

use crate::boletos::{
    assert_each_file_is_its_clients, clients_with_a_boleto, digits, quota, setup,
};
use crate::lifecycle::some_contracts;
use crate::support::*;
use crate::sync::{NO_LIMIT, enqueue, with_crm};

/// `n` creates of `produtos` 1..=n in the CRM outbox.
fn enqueue_products(env: &Env, n: u32) {
    let lines: Vec<String> = (1..=n)
        .map(|i| format!(r#"{{"entity": "produtos", "record_id": "{i}", "action": "create", "payload": {{"nome": "P{i}"}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(enqueue(env, &refs).code, 0);
}

/// `n` active Stripe subscriptions (`s0`.., Stripe `sub_0`..) whose period ends today, each
/// renewed at the sandbox's Stripe.
fn stripe_subscriptions_ending_today(env: &Env, n: u32) {
    let mut lines =
        vec![r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#.to_string()];
    for u in 0..n {
        lines.push(format!(
            r#"{{"type": "user", "id": "u{u}", "name": "User {u}", "email": "u{u}@example.com", "plan": "pro"}}"#
        ));
        lines.push(format!(
            r#"{{"type": "subscription", "id": "s{u}", "user": "u{u}", "plan": "pro", "status": "active", "current_period_start": "2025-10-10T22:00:00Z", "current_period_end": "2025-11-10T22:00:00Z", "gateway": "stripe", "gateway_subscription_id": "sub_{u}"}}"#
        ));
        env.sandbox
            .stripe
            .set(&format!("sub_{u}"), "active", 1_762_812_000, 1_765_404_000);
    }
    std::fs::write(env.path("subs.jsonl"), lines.join("\n")).unwrap();
    let path = env.path("subs.jsonl");
    assert_eq!(
        env.run(&["import", "subscriptions", path.to_str().unwrap()])
            .code,
        0
    );
}

fn full() -> bool {
    std::env::var("CRM_JOBS_FULL_SUITES").is_ok_and(|v| v == "1")
}

/// The kill points: `n` request counts in `1..=max`, spread by a seeded generator.
fn kill_points(n: usize, max: u64) -> Vec<u64> {
    let mut seed: u64 = std::env::var("CRM_JOBS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut points: Vec<u64> = (0..n)
        .map(|_| {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            1 + (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % max
        })
        .collect();
    points.sort_unstable();
    points.dedup();
    points
}

fn iterations(quick: usize, long: usize) -> usize {
    if full() { long } else { quick }
}

/// Starts `args`, lets `n` requests of `route` through, holds the next and kills the process
/// (SIGKILL) while that request waits. Returns false when the run ended before (fewer requests).
fn kill_at(env: &Env, args: &[&str], route: Route, n: u64) -> bool {
    env.sandbox.faults.hold_after(route, n);
    let mut child = env.spawn(args);
    let held = env
        .sandbox
        .faults
        .wait_held(route, 1, std::time::Duration::from_secs(10));
    let killed = held >= 1;
    child.kill().ok();
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    killed
}

/// Invariants of the store after any crash and a run to completion.
fn store_is_sound(env: &Env, job: &str) {
    let ok: String = env.query("PRAGMA integrity_check");
    assert_eq!(ok, "ok");
    let fk: i64 = env.query("SELECT COUNT(*) FROM pragma_foreign_key_check");
    assert_eq!(fk, 0, "foreign keys");
    let running: i64 = env.query(&format!(
        "SELECT COUNT(*) FROM runs WHERE job = '{job}' AND status = 'running'"
    ));
    assert_eq!(running, 0, "a run left `running`");
    let interrupted: i64 = env.query(&format!(
        "SELECT COUNT(*) FROM runs WHERE job = '{job}' AND status = 'interrupted'"
    ));
    assert!(interrupted >= 1, "the killed run shows as `interrupted`");
}

/// No partial file under a final name: every file the store points to has the hash the store
/// recorded, and any other file is a temporary one.
fn no_partial_file(env: &Env, table: &str, settled: bool) {
    let db = env.db();
    let mut stmt = db
        .prepare(&format!(
            "SELECT pdf_path, pdf_sha256 FROM {table} WHERE pdf_path IS NOT NULL"
        ))
        .unwrap();
    let recorded: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for f in files_under(&env.downloads()) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with(".crm-jobs-") {
            continue;
        }
        let path = f.to_string_lossy().to_string();
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            bytes.starts_with(b"%PDF-") && bytes.windows(5).any(|w| w == b"%%EOF"),
            "{f:?} is not a whole PDF"
        );
        // A kill between the file's rename and the store's commit leaves a whole file the store
        // does not know yet: the next run writes it again under the same name.
        let Some((_, Some(sha))) = recorded.iter().find(|(p, _)| *p == path) else {
            assert!(
                !settled,
                "{f:?} is under a final name but the store does not know it"
            );
            continue;
        };
        assert_eq!(
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            sha,
            "{f:?} is not the file the store recorded"
        );
    }
}

#[test]
fn crash_fetch_invoices_anywhere_then_finish() {
    let mut killed = 0;
    // 4 contracts x 2 invoices: params, session, 4 debts, 8 PDFs = 14 requests.
    for n in kill_points(iterations(3, 20), 14) {
        let env = Env::new();
        some_contracts(&env, 100, 4);
        let route = if n <= 6 {
            Route::NioDebts
        } else {
            Route::NioPdf
        };
        let at = if n <= 6 { n.min(4) - 1 } else { n - 7 };
        if !kill_at(&env, &["fetch-invoices"], route, at) {
            continue;
        }
        killed += 1;
        no_partial_file(&env, "invoices", false);
        let out = env.run(&["fetch-invoices"]);
        assert_eq!(out.code, 0, "kill point {n}: {out:?}");
        store_is_sound(&env, "fetch-invoices");
        let whole: i64 = env.query(
            "SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched' AND fetch_status = 'success' AND pdf_sha256 IS NOT NULL",
        );
        assert_eq!(
            whole, 8,
            "kill point {n}: every invoice matched with its PDF"
        );
        no_partial_file(&env, "invoices", true);
        let pdfs = files_under(&env.downloads())
            .into_iter()
            .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(pdfs, 8, "kill point {n}: one file per invoice");
    }
    assert!(killed > 0, "no kill point was reached");
}

#[test]
fn crash_sync_queue_anywhere_then_finish_without_duplicates() {
    let mut killed = 0;
    let items = 6;
    for n in kill_points(iterations(3, 20), items) {
        let env = Env::new();
        with_crm(&env, NO_LIMIT);
        enqueue_products(&env, items as u32);
        if !kill_at(&env, &["sync-queue"], Route::Crm, n - 1) {
            continue;
        }
        killed += 1;
        let out = env.run(&["sync-queue"]);
        assert_eq!(out.code, 0, "kill point {n}: {out:?}");
        store_is_sound(&env, "sync-queue");
        assert_eq!(
            env.sandbox.crm.records("produtos").len(),
            items as usize,
            "kill point {n}: no item lost"
        );
        assert_eq!(
            env.sandbox.crm.duplicates(),
            0,
            "kill point {n}: no record created twice"
        );
        let done: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'done'");
        assert_eq!(done, items as i64, "kill point {n}");
    }
    assert!(killed > 0, "no kill point was reached");
}

#[test]
fn crash_download_boletos_anywhere_then_finish() {
    let mut killed = 0;
    let clients = 3;
    for n in kill_points(iterations(3, 15), clients) {
        let env = Env::new();
        env.configure("", "concurrency = 1");
        clients_with_a_boleto(&env, &[(70, "ANA"), (71, "BRUNO"), (72, "CARLA")]);
        let args = ["download-boletos", "--ano", "2025", "--mes", "11"];
        if !kill_at(&env, &args, Route::CanopusPdf, n - 1) {
            continue;
        }
        killed += 1;
        no_partial_file(&env, "boletos", false);
        let out = env.run(&args);
        assert_eq!(out.code, 0, "kill point {n}: {out:?}");
        store_is_sound(&env, "download-boletos");
        no_partial_file(&env, "boletos", true);
        let finals: Vec<String> = files_under(&env.downloads())
            .into_iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
            .filter(|f| !f.starts_with('.'))
            .collect();
        assert_eq!(finals.len(), clients as usize, "kill point {n}: {finals:?}");
        let ok: i64 = env.query(
            "SELECT COUNT(DISTINCT client_id) FROM boletos WHERE outcome = 'success' AND year = 2025 AND month = 11",
        );
        assert_eq!(ok, clients as i64, "kill point {n}");
    }
    assert!(killed > 0, "no kill point was reached");
}

#[test]
fn jobs_at_once_on_one_store_never_meet_a_locked_database() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    some_contracts(&env, 200, 6);
    enqueue_products(&env, 20);
    let report = env.path("report.html");
    let report = report.to_str().unwrap();
    for round in 0..iterations(2, 10) {
        let children: Vec<_> = [
            vec!["fetch-invoices"],
            vec!["fetch-invoices"],
            vec!["sync-queue"],
            vec!["sync-queue"],
            vec!["cleanup"],
            vec!["retry"],
            vec!["status", "--json"],
            vec!["report", "--out", report],
        ]
        .into_iter()
        .map(|a| (a.join(" "), env.spawn(&a)))
        .collect();
        for (what, c) in children {
            let o = c.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                matches!(o.status.code(), Some(0) | Some(75)),
                "round {round}: `{what}` exited {:?}: {stderr}",
                o.status.code()
            );
            assert!(
                !stderr.to_lowercase().contains("database is locked")
                    && !stderr.to_lowercase().contains("busy"),
                "round {round}: `{what}`: {stderr}"
            );
        }
    }
    assert_eq!(env.sandbox.crm.duplicates(), 0, "no double work");
    assert_eq!(env.sandbox.crm.records("produtos").len(), 20);
    let ok: String = env.query("PRAGMA integrity_check");
    assert_eq!(ok, "ok");
}

/// Issue 11's target: 15% of every portal request (logins, pages, postbacks, the print window,
/// the PDF) answered with a 503 or a reset connection, default retry settings: every boleto is
/// saved within two runs, each downloaded once, each file its own client's.
#[test]
fn with_fifteen_percent_portal_faults_every_boleto_is_saved_within_two_runs() {
    let env = Env::new();
    // The default backoff (the harness shortens it for the other tests).
    env.configure("", "backoff_ms = 500");
    let names = ["ANA", "BRUNO", "CARLA", "DAVI", "EVA", "FABIO"];
    let rows: Vec<(String, String, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (format!("{}/1", i + 1), digits(800 + i as u32), *name))
        .collect();
    let table: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|(q, d, n)| (q.as_str(), d.as_str(), *n, "Em dia"))
        .collect();
    setup(&env, &table);
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = 800 + i as u32;
        // Every other client has two quotas.
        let count = 1 + i % 2;
        let quotas = (1..=count)
            .map(|k| quota(&format!("{n}{k}"), name, &["2025-11-10"]))
            .collect();
        env.sandbox.canopus.set_client(&digits(n), quotas);
        for k in 1..=count {
            let file = if count > 1 {
                format!("{name}_NOVEMBRO_{n}{k}-0123")
            } else {
                format!("{name}_NOVEMBRO")
            };
            expected.push((file, digits(n), format!("{n}{k}/0123")));
        }
    }
    env.sandbox.faults.set_error_rate(0.10);
    env.sandbox.faults.set_reset_rate(0.05);
    let args = ["download-boletos", "--ano", "2025", "--mes", "11"];
    for _ in 0..2 {
        let out = env.run(&args);
        assert!(matches!(out.code, 0 | 1 | 3), "{out:?}");
        if out.code == 0 {
            break;
        }
    }
    env.sandbox.faults.set_error_rate(0.0);
    env.sandbox.faults.set_reset_rate(0.0);
    let expected: Vec<(&str, String, &str)> = expected
        .iter()
        .map(|(f, d, q)| (f.as_str(), d.clone(), q.as_str()))
        .collect();
    assert_each_file_is_its_clients(&env, &expected);
    for (_, cpf, q) in &expected {
        assert_eq!(env.sandbox.canopus.downloads(cpf, q), 1, "{cpf} {q}");
    }
    assert!(
        env.sandbox.faults.seen(Route::CanopusLogin) > 0,
        "logins met the faults too"
    );
}

#[test]
fn with_ten_percent_faults_every_item_ends_in_its_final_state() {
    let env = Env::new();
    // The client retries each Nio request twice; CRM items are tried up to 8 times; boletos in
    // error and Stripe errors are taken again by the next round.
    env.write_config("request_retries = 2");
    with_crm(&env, NO_LIMIT);
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[sync]\nmax_attempts = 8\n\n{config}"),
    )
    .unwrap();
    some_contracts(&env, 300, 10);
    enqueue_products(&env, 30);
    clients_with_a_boleto(
        &env,
        &[(600, "ANA"), (601, "BRUNO"), (602, "CARLA"), (603, "DAVI")],
    );
    stripe_subscriptions_ending_today(&env, 4);
    env.sandbox.faults.set_error_rate(0.10);
    env.sandbox.faults.set_latency(1, 4);
    // Each round is a later minute, past every backoff.
    for round in 0..12 {
        let now = format!("2025-11-10T12:{:02}:00-03:00", round * 4);
        for args in [
            &["fetch-invoices"][..],
            &["retry"],
            &["sync-queue"],
            &["download-boletos", "--ano", "2025", "--mes", "11"],
            &["renew", "--step", "stripe"],
        ] {
            let o = env.cmd(args).env("CRM_JOBS_NOW", &now).output().unwrap();
            assert!(
                matches!(o.status.code(), Some(0) | Some(1) | Some(3)),
                "{args:?}: {o:?}"
            );
        }
        let pending: i64 = env.query(
            "SELECT (SELECT 20 - COUNT(*) FROM invoices WHERE fetch_status = 'success' AND match_outcome = 'matched')
                  + (SELECT COUNT(*) FROM sync_queue WHERE status <> 'done')
                  + (SELECT 4 - COUNT(DISTINCT client_id) FROM boletos WHERE outcome = 'success')
                  + (SELECT COUNT(*) FROM subscriptions WHERE current_period_end < '2025-12-01')",
        );
        if pending == 0 {
            break;
        }
    }
    env.sandbox.faults.set_error_rate(0.0);
    let invoices: i64 = env.query(
        "SELECT COUNT(*) FROM invoices WHERE fetch_status = 'success' AND match_outcome = 'matched'",
    );
    assert_eq!(
        invoices, 20,
        "every invoice matched within the retry budget"
    );
    let done: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'done'");
    assert_eq!(done, 30, "every queue item done within the retry budget");
    assert_eq!(env.sandbox.crm.duplicates(), 0);
    assert_eq!(env.sandbox.crm.records("produtos").len(), 30);
    let boletos: i64 = env.query(
        "SELECT COUNT(DISTINCT client_id) FROM boletos WHERE outcome = 'success' AND year = 2025 AND month = 11",
    );
    assert_eq!(boletos, 4, "every boleto saved within the retry budget");
    let renewed: i64 = env.query(
        "SELECT COUNT(*) FROM audit_log WHERE entity = 'subscription' AND action = 'renewed'",
    );
    assert_eq!(renewed, 4, "every renewal applied once");
}

#[test]
fn secrets_never_reach_logs_output_or_the_store_and_files_are_private() {
    let env = Env::new();
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[metrics]\ntextfile_dir = \"metrics\"\n\n{config}"),
    )
    .unwrap();
    some_contracts(&env, 400, 2);
    clients_with_a_boleto(&env, &[(80, "DANIEL")]);
    enqueue_products(&env, 1);
    let secrets = [
        crm_jobs::sandbox::DEFAULT_PASSPHRASE,
        FERNET_KEY,
        "s3nha",
        crm_jobs::sandbox::crm::ACCESS_TOKEN,
        crm_jobs::sandbox::crm::SECRET_TOKEN,
        crm_jobs::sandbox::stripe::SECRET_KEY,
        crm_jobs::sandbox::SMTP_PASSWORD,
    ];
    let mut seen = String::new();
    for args in [
        &["fetch-invoices"][..],
        &["download-boletos", "--ano", "2025", "--mes", "11"],
        &["sync-queue"],
        &["renew"],
        &["cleanup"],
        &["doctor"],
        &["config", "check"],
        &["status"],
        &["credentials", "list"],
    ] {
        for format in ["text", "json"] {
            let mut a = vec!["-vv", "--log-format", format, "--json"];
            a.extend_from_slice(args);
            let o = env.run(&a);
            seen.push_str(&o.stdout);
            seen.push_str(&o.stderr);
        }
    }
    for s in secrets {
        assert!(!seen.contains(s), "a secret in the output or logs: {s}");
    }
    // The store (with its WAL) and every file written: no secret in clear text.
    let mut files = files_under(env.dir.path());
    files.retain(|f| !f.ends_with("config.toml"));
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "`{s}` in clear text in {f:?}"
            );
        }
    }
    // Created files and folders are private to the owner (the test's own inputs aside).
    let ours = [env.path("store"), env.downloads(), env.path("metrics")];
    for f in files
        .into_iter()
        .filter(|f| ours.iter().any(|d| f.starts_with(d)))
    {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{f:?} is {mode:o}");
    }
    for d in [
        env.path("store"),
        env.path("store/crm.db.locks"),
        env.downloads(),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{d:?} is {mode:o}");
    }
}

#[test]
fn tls_certificates_are_verified_and_only_a_configured_ca_is_trusted() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    let config = std::fs::read_to_string(env.path("config.toml"))
        .unwrap()
        .replace(&env.sandbox.crm_base_url(), &env.sandbox.tls_url("crm"));
    std::fs::write(env.path("config.toml"), &config).unwrap();
    enqueue_products(&env, 1);
    // The sandbox's HTTPS certificate is signed by a test CA nobody trusts: refused.
    let refused = env.run(&["sync-queue"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("the server's TLS certificate is not trusted: if it is signed by a CA of your own, put that CA's PEM in `[tls] ca_file`"),
        "{refused:?}"
    );
    assert!(env.sandbox.crm.records("produtos").is_empty());
    if std::env::var("CRM_JOBS_CORPUS_PRINT").is_ok() {
        eprintln!("{}", refused.stderr);
    }
    // With the test CA configured, the same request goes through.
    std::fs::write(env.path("test-ca.pem"), env.sandbox.tls_ca_pem()).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!(
            "[tls]\nca_file = \"{}\"\n\n{config}",
            env.path("test-ca.pem").display()
        ),
    )
    .unwrap();
    let out = env
        .cmd(&["sync-queue"])
        .env("CRM_JOBS_NOW", "2025-11-10T12:10:00-03:00")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.sandbox.crm.records("produtos").len(), 1);
    // A file that holds no certificate is a configuration error.
    std::fs::write(env.path("test-ca.pem"), "not a certificate\n").unwrap();
    let bad = env.run(&["config", "check"]);
    assert_eq!(bad.code, 78, "{bad:?}");
    assert!(bad.stderr.contains("holds no PEM certificate"), "{bad:?}");
}

#[test]
fn crash_renew_while_an_email_is_in_the_smtp_conversation() {
    let users = 3usize;
    let mut killed = 0;
    for k in 0..users {
        let env = Env::new();
        let mut lines =
            vec![r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#.to_string()];
        for u in 0..users {
            lines.push(format!(
                r#"{{"type": "user", "id": "u{u}", "name": "User {u}", "email": "u{u}@example.com"}}"#
            ));
            lines.push(format!(
                r#"{{"type": "subscription", "id": "s{u}", "user": "u{u}", "plan": "pro", "status": "active", "current_period_start": "2025-10-12T00:00:00Z", "current_period_end": "2025-11-12T00:00:00Z"}}"#
            ));
        }
        std::fs::write(env.path("subs.jsonl"), lines.join("\n")).unwrap();
        let path = env.path("subs.jsonl");
        assert_eq!(
            env.run(&["import", "subscriptions", path.to_str().unwrap()])
                .code,
            0
        );
        assert_eq!(env.run(&["renew", "--step", "expiring"]).code, 0);
        // The (k+1)-th message is stored by the server, which then never answers the final dot:
        // the process is killed there.
        env.sandbox.smtp.hold_after_messages(k);
        let mut child = env.spawn(&["renew", "--step", "emails"]);
        let stored = env
            .sandbox
            .smtp
            .wait_received(k + 1, std::time::Duration::from_secs(10));
        child.kill().unwrap();
        child.wait().unwrap();
        env.sandbox.smtp.release();
        if stored < k + 1 {
            continue;
        }
        killed += 1;
        let out = env.run(&["renew", "--step", "emails"]);
        // 1 when the unknown one was all that was left (documented: nothing went well).
        assert!(matches!(out.code, 0 | 1 | 3), "k={k}: {out:?}");
        store_is_sound(&env, "renew");
        // No email sent twice knowingly: each recipient got exactly one message.
        let mut to: Vec<String> = env
            .sandbox
            .smtp
            .received()
            .into_iter()
            .flat_map(|m| m.to)
            .collect();
        to.sort();
        let expected: Vec<String> = (0..users).map(|u| format!("u{u}@example.com")).collect();
        assert_eq!(to, expected, "k={k}");
        // The one in the conversation when the process died is `unknown`, for an operator
        // (`renew --resend ID` after checking the mailbox); the others `sent`.
        let statuses: String = env.query(
            "SELECT group_concat(status, ',') FROM (SELECT status FROM email_outbox ORDER BY id)",
        );
        let mut want = vec!["sent"; users];
        want[k] = "unknown";
        assert_eq!(statuses, want.join(","), "k={k}: {out:?}");
    }
    assert!(killed > 0, "no kill point was reached");
}

/// Runs `args` aborting at the `n`-th commit (`CRM_JOBS_TEST_ABORT_AT_COMMIT`, debug builds):
/// true when the process died there, false when it finished first.
fn abort_at_commit(env: &Env, args: &[&str], n: u64) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    let o = env
        .cmd(args)
        .env("CRM_JOBS_TEST_ABORT_AT_COMMIT", n.to_string())
        .output()
        .unwrap();
    if o.status.signal() == Some(rustix::process::Signal::ABORT.as_raw()) {
        return true;
    }
    if std::env::var("CRM_JOBS_CORPUS_PRINT").is_ok() {
        eprintln!("commit {n}: {o:?}");
    }
    assert!(
        o.status.code().is_some(),
        "commit {n}: died otherwise: {o:?}"
    );
    false
}

/// Every commit point of a job, in order: abort there, finish with a normal
/// run, check. Returns how many points were crossed.
fn every_commit_point(setup: impl Fn(&Env), args: &[&str], check: impl Fn(&Env, u64)) -> u64 {
    // Every point, in order, until a run gets through (at most 40 by default).
    let sample: Vec<u64> = (1..=if full() { 400 } else { 40 }).collect();
    let mut crossed = 0;
    for n in sample {
        let env = Env::new();
        setup(&env);
        if !abort_at_commit(&env, args, n) {
            break;
        }
        crossed += 1;
        let out = env.run(args);
        assert!(
            matches!(out.code, 0 | 3),
            "after an abort at commit {n}: {out:?}"
        );
        let ok: String = env.query("PRAGMA integrity_check");
        assert_eq!(ok, "ok", "commit {n}");
        let running: i64 = env.query("SELECT COUNT(*) FROM runs WHERE status = 'running'");
        assert_eq!(running, 0, "commit {n}: a run left `running`");
        check(&env, n);
    }
    eprintln!("{args:?}: {crossed} commit points crossed");
    crossed
}

fn cleanup_rows(env: &Env) {
    assert_eq!(env.run(&["status"]).code, 0);
    let db = env.db();
    db.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO sync_log (item_id, at, request) SELECT 1, '2025-09-01T00:00:00.000Z', 'POST /clientes' FROM n;
         INSERT INTO sync_log (item_id, at, request) VALUES (1, '2025-11-09T00:00:00.000Z', 'POST /clientes');",
    )
    .unwrap();
    drop(db);
    let file = env.path("more.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"type": "user", "id": "u1", "name": "Ana", "email": "ana@example.com"}"#,
            r#"{"type": "session", "id": "old1", "user": "u1", "expires_at": "2025-09-01T00:00:00Z"}"#,
            r#"{"type": "session", "id": "old2", "user": "u1", "expires_at": "2025-09-02T00:00:00Z"}"#,
            r#"{"type": "session", "id": "new", "user": "u1", "expires_at": "2025-10-20T00:00:00Z"}"#,
            r#"{"type": "payment", "id": "stale", "user": "u1", "amount": 4990, "status": "pending", "created_at": "2025-11-01T00:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    assert_eq!(
        env.run(&["import", "subscriptions", file.to_str().unwrap()])
            .code,
        0
    );
}

#[test]
fn crash_cleanup_at_every_store_commit() {
    let crossed = every_commit_point(
        |env| {
            env.configure("", "");
            let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
            std::fs::write(
                env.path("config.toml"),
                format!("[cleanup]\nbatch_size = 500\n\n{cfg}"),
            )
            .unwrap();
            cleanup_rows(env);
        },
        &["cleanup"],
        |env, n| {
            let old: i64 =
                env.query("SELECT COUNT(*) FROM sync_log WHERE at < '2025-10-01T00:00:00.000Z'");
            let recent: i64 = env.query("SELECT COUNT(*) FROM sync_log");
            assert_eq!((old, recent), (0, 1), "commit {n}");
            // Each soft delete and each cancel audited exactly once, whatever the crash point.
            let audits: String = env.query(
                "SELECT group_concat(entity || ':' || action || ':' || entity_id, ',') FROM (SELECT * FROM audit_log ORDER BY entity, entity_id)",
            );
            let sessions: String = env.query(
                "SELECT group_concat(external_id) FROM (SELECT external_id FROM sessions WHERE deleted_at IS NOT NULL ORDER BY external_id)",
            );
            assert_eq!(sessions, "old1,old2", "commit {n}");
            assert_eq!(
                audits.matches("session:soft_deleted").count(),
                2,
                "commit {n}: {audits}"
            );
            assert_eq!(
                audits.matches("payment:cancelled").count(),
                1,
                "commit {n}: {audits}"
            );
        },
    );
    assert!(crossed >= 3, "{crossed} commit points crossed");
}

#[test]
fn crash_renew_stripe_at_every_store_commit() {
    let crossed = every_commit_point(
        |env| stripe_subscriptions_ending_today(env, 4),
        &["renew", "--step", "stripe"],
        |env, n| {
            // Each renewal applied once: one audit row and one email per subscription.
            let renewed: i64 = env.query(
                "SELECT COUNT(*) FROM subscriptions WHERE current_period_end > '2025-12-01'",
            );
            assert_eq!(renewed, 4, "commit {n}");
            let audits: i64 = env.query(
                "SELECT COUNT(*) FROM audit_log WHERE entity = 'subscription' AND action = 'renewed'",
            );
            assert_eq!(audits, 4, "commit {n}");
            let emails: i64 = env.query("SELECT COUNT(*) FROM email_outbox");
            assert_eq!(emails, 4, "commit {n}");
        },
    );
    assert!(crossed >= 3, "{crossed} commit points crossed");
}

#[test]
fn crash_fetch_invoices_and_sync_queue_at_every_store_commit() {
    let crossed = every_commit_point(
        |env| some_contracts(env, 500, 3),
        &["fetch-invoices"],
        |env, n| {
            let whole: i64 = env.query(
                "SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched' AND pdf_sha256 IS NOT NULL",
            );
            assert_eq!(whole, 6, "commit {n}");
            no_partial_file(env, "invoices", true);
        },
    );
    assert!(
        crossed >= 5,
        "fetch-invoices: {crossed} commit points crossed"
    );
    let crossed = every_commit_point(
        |env| {
            with_crm(env, NO_LIMIT);
            enqueue_products(env, 4);
        },
        &["sync-queue"],
        |env, n| {
            assert_eq!(env.sandbox.crm.duplicates(), 0, "commit {n}");
            assert_eq!(env.sandbox.crm.records("produtos").len(), 4, "commit {n}");
            let done: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'done'");
            assert_eq!(done, 4, "commit {n}");
        },
    );
    assert!(crossed >= 5, "sync-queue: {crossed} commit points crossed");
}

#[test]
fn crash_download_boletos_at_every_store_commit() {
    let args = ["download-boletos", "--ano", "2025", "--mes", "11"];
    let crossed = every_commit_point(
        |env| {
            env.configure("", "concurrency = 1");
            clients_with_a_boleto(env, &[(91, "ANA"), (92, "BRUNO")]);
        },
        &args,
        |env, n| {
            no_partial_file(env, "boletos", true);
            let ok: i64 = env.query(
                "SELECT COUNT(DISTINCT client_id) FROM boletos WHERE outcome = 'success' AND year = 2025 AND month = 11",
            );
            assert_eq!(ok, 2, "commit {n}");
            let finals = files_under(&env.downloads())
                .into_iter()
                .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
                .count();
            assert_eq!(finals, 2, "commit {n}: one file per client, none twice");
        },
    );
    assert!(crossed >= 3, "{crossed} commit points crossed");
}

#[test]
fn crash_retry_at_every_store_commit() {
    let crossed = every_commit_point(
        |env| {
            some_contracts(env, 700, 3);
            // Every debts request of this run fails with a 503: three transient errors.
            env.sandbox.faults.push(
                Route::NioDebts,
                crm_jobs::sandbox::Fault::Status {
                    status: 503,
                    retry_after: None,
                },
                3,
            );
            let out = env.run(&["fetch-invoices", "--no-retry"]);
            assert_eq!(out.code, 1, "{out:?}");
            let transient: i64 =
                env.query("SELECT COUNT(*) FROM invoices WHERE error_kind = 'transient'");
            assert!(transient > 0);
        },
        &["retry"],
        |env, n| {
            let whole: i64 = env.query(
                "SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched' AND pdf_sha256 IS NOT NULL",
            );
            assert_eq!(whole, 6, "commit {n}");
            no_partial_file(env, "invoices", true);
        },
    );
    assert!(crossed >= 3, "{crossed} commit points crossed");
}

/// Issue 13, 5: with the CRM ignoring `Idempotency-Key` and 30% of writes answered with a fault
/// after they were committed, crm-jobs created 18 duplicates and flagged none. Clients and
/// products are looked up by their natural key before a create is sent again: none is created
/// twice. Sales and atividades have no natural key: each one sent again is `unknown_outcome`,
/// for an operator, and only those can have a duplicate.
#[test]
fn with_keys_ignored_and_faults_after_commit_no_client_or_product_is_created_twice() {
    let env = Env::new();
    with_crm(&env, "[crm]\nrate_limit_per_minute = 0\nconcurrency = 4\n");
    crate::sync::with_sync(&env, "max_attempts = 30");
    env.sandbox.crm.set_idempotency(false);
    let n = 12;
    let mut lines = Vec::new();
    for i in 1..=n {
        lines.push(format!(
            r#"{{"entity": "clientes", "record_id": "C{i}", "action": "create", "payload": {{"nome": "Cliente {i}", "cpf_cnpj": "{}", "email": "c{i}@example.com"}}}}"#,
            cpf(i).formatted()
        ));
        lines.push(format!(
            r#"{{"entity": "produtos", "record_id": "P{i}", "action": "upsert", "payload": {{"nome": "Produto {i}", "codigo_barras": "789{i:010}"}}}}"#
        ));
        lines.push(format!(
            r#"{{"entity": "vendas", "record_id": "V{i}", "action": "create", "payload": {{"cliente_id": "C{i}", "produtos": [{{"produto": {{"id": "P{i}", "quantidade": "1"}}}}]}}}}"#
        ));
        lines.push(format!(
            r#"{{"entity": "atividades", "record_id": "A{i}", "action": "create", "payload": {{"cliente_id": "C{i}", "descricao": "visita {i}"}}}}"#
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(enqueue(&env, &refs).code, 0);
    env.sandbox.faults.set_after_commit_rate(0.3);
    // Each round is a later hour, past every backoff.
    for round in 0..40 {
        let now = format!(
            "2025-11-{:02}T{:02}:00:00-03:00",
            10 + round / 24,
            round % 24
        );
        let o = env
            .cmd(&["sync-queue"])
            .env("CRM_JOBS_NOW", &now)
            .output()
            .unwrap();
        assert!(
            matches!(o.status.code(), Some(0) | Some(1) | Some(3)),
            "{o:?}"
        );
        let left: i64 = env.query(
            "SELECT COUNT(*) FROM sync_queue WHERE status <> 'done' AND status <> 'superseded'",
        );
        if left == 0 {
            break;
        }
    }
    env.sandbox.faults.set_after_commit_rate(0.0);
    assert!(
        env.sandbox.faults.faulted_after_commit(Route::Crm) >= 10,
        "the suite met faults after commit"
    );
    let done: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'done'");
    assert_eq!(done, 4 * i64::from(n), "every item done");
    assert_eq!(
        env.sandbox.crm.duplicate_keys("clientes"),
        Vec::<String>::new()
    );
    assert_eq!(
        env.sandbox.crm.duplicate_keys("produtos"),
        Vec::<String>::new()
    );
    let clientes = env.sandbox.crm.records("clientes");
    assert_eq!(clientes.len(), n as usize);
    for i in 1..=n {
        let c = clientes
            .iter()
            .find(|(_, r)| r["nome"] == format!("Cliente {i}"))
            .unwrap();
        assert_eq!(
            c.1,
            serde_json::json!({"id": c.0, "nome": format!("Cliente {i}"), "cpf_cnpj": cpf(i).formatted(), "email": format!("c{i}@example.com")})
        );
    }
    assert_eq!(env.sandbox.crm.records("produtos").len(), n as usize);
    // A duplicate sale or atividade is one an operator was told of.
    for resource in ["vendas", "orcamentos"] {
        for key in env.sandbox.crm.duplicate_keys(resource) {
            let unknown: bool = env.query(&format!(
                "SELECT unknown_outcome FROM sync_queue WHERE idempotency_key = '{key}'"
            ));
            assert!(unknown, "{resource}: {key} was created twice unflagged");
        }
    }
    // Every sale names CRM records that exist.
    let ids: Vec<String> = clientes.iter().map(|(id, _)| id.clone()).collect();
    for (_, venda) in env.sandbox.crm.records("vendas") {
        assert!(ids.contains(&venda["cliente_id"].as_str().unwrap().to_string()));
    }
}
