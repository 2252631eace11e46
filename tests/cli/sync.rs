//! `enqueue`, `sync-queue`, `cleanup` and `export queue` against the sandbox's CRM API.

use std::time::Duration;

use crm_jobs::sandbox::{Fault, Route};

use crate::support::*;

pub(crate) fn enqueue(env: &Env, lines: &[&str]) -> Out {
    let file = env.path("changes.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    env.run(&["enqueue", file.to_str().unwrap()])
}

fn log_requests(env: &Env) -> Vec<String> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT request FROM sync_log ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn statuses(env: &Env) -> Vec<(i64, String)> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT id, status FROM sync_queue ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub(crate) const NO_LIMIT: &str = "[crm]\nrate_limit_per_minute = 0\nconcurrency = 1\n";

/// Puts `crm` (a `[crm]` header and keys) in place of the `[crm]` header of the config.
pub(crate) fn with_crm(env: &Env, crm: &str) {
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(env.path("config.toml"), config.replacen("[crm]\n", crm, 1)).unwrap();
}

#[test]
fn priorities_references_and_external_ids() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    let out = enqueue(
        &env,
        &[
            r#"{"entity": "atividades", "record_id": "A1", "action": "create", "payload": {"descricao": "ligar"}}"#,
            r#"{"entity": "clientes", "record_id": 7, "action": "upsert", "payload": {"nome": "Maria"}}"#,
            r#"{"entity": "produtos", "record_id": "P1", "action": "upsert", "payload": {"nome": "Fibra 500"}}"#,
            r#"{"entity": "vendas", "record_id": "V1", "action": "create", "payload": {"cliente_id": 7, "produtos": [{"produto": {"id": "P1", "quantidade": "1"}}]}}"#,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("enqueued 4 change(s)"), "{out:?}");
    let out = env.run(&["sync-queue", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The sale goes first by priority, waits for its client, and is sent once the client and
    // the product have CRM ids.
    assert_eq!(
        log_requests(&env),
        vec![
            "deferred",
            "POST /clientes",
            "POST /produtos",
            "POST /orcamentos",
            "POST /vendas"
        ]
    );
    let clientes = env.sandbox.crm.records("clientes");
    let produtos = env.sandbox.crm.records("produtos");
    let vendas = env.sandbox.crm.records("vendas");
    assert_eq!(vendas.len(), 1);
    assert_eq!(vendas[0].1["cliente_id"], clientes[0].0.as_str());
    assert_eq!(
        vendas[0].1["produtos"][0]["produto"]["id"],
        produtos[0].0.as_str()
    );
    let ext: String = env.query(
        "SELECT external_id FROM external_ids WHERE entity = 'clientes' AND record_id = '7'",
    );
    assert_eq!(ext, clientes[0].0);
    assert!(statuses(&env).iter().all(|(_, s)| s == "done"));

    // An update of a synced record is a PUT to its CRM id.
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "7", "action": "upsert", "payload": {"nome": "Maria Souza"}}"#,
        ],
    );
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    assert_eq!(
        log_requests(&env).last().unwrap(),
        &format!("PUT /clientes/{}", clientes[0].0)
    );
    assert_eq!(
        env.sandbox.crm.records("clientes")[0].1["nome"],
        "Maria Souza"
    );
}

#[test]
fn a_newer_change_supersedes_the_pending_one() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "9", "action": "create", "payload": {"nome": "Primeiro"}}"#,
            r#"{"entity": "clientes", "record_id": "9", "action": "update", "payload": {"nome": "Segundo"}}"#,
            r#"{"entity": "clientes", "record_id": "10", "action": "create", "payload": {"nome": "Nunca"}}"#,
            r#"{"entity": "clientes", "record_id": "10", "action": "delete"}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        log_requests(&env),
        vec!["POST /clientes"],
        "one request, the latest payload"
    );
    let records = env.sandbox.crm.records("clientes");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1["nome"], "Segundo");
    let s: Vec<String> = statuses(&env).into_iter().map(|(_, s)| s).collect();
    assert_eq!(s, vec!["superseded", "done", "superseded", "done"]);
}

#[test]
fn an_item_waits_for_a_reference_that_is_not_synced() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "vendas", "record_id": "V9", "action": "create", "payload": {"cliente_id": "404"}}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (status, waiting, attempts): (String, String, i64) = env
        .db()
        .query_row(
            "SELECT status, waiting_for, attempts FROM sync_queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), waiting.as_str(), attempts),
        ("pending", "clientes:404", 0)
    );
    assert!(env.sandbox.crm.records("vendas").is_empty());
}

#[test]
fn a_validation_error_fails_the_item_with_the_crm_message() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "1", "action": "create", "payload": {"email": "x@y"}}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "item #1 (create clientes 1): the CRM answered 422: O campo nome é obrigatório"
        ),
        "{out:?}"
    );
    let (status, error): (String, String) = env
        .db()
        .query_row("SELECT status, last_error FROM sync_queue", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(status, "failed");
    assert_eq!(error, "the CRM answered 422: O campo nome é obrigatório");
}

#[test]
fn refused_credentials_stop_the_run_and_touch_no_item() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "1", "action": "create", "payload": {"nome": "A"}}"#,
            r#"{"entity": "clientes", "record_id": "2", "action": "create", "payload": {"nome": "B"}}"#,
        ],
    );
    let out = env
        .cmd(&["sync-queue"])
        .env("CRM_JOBS_CRM_ACCESS_TOKEN", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: the CRM refused the credentials (401 Unauthorized: Token de acesso inválido)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("sandbox-secret-token"));
    let untouched: i64 =
        env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'pending' AND attempts = 0");
    assert_eq!(untouched, 2);
}

#[test]
fn too_many_requests_pauses_as_told_and_loses_nothing() {
    let env = Env::new();
    with_crm(&env, "[crm]\nrate_limit_per_minute = 0\nconcurrency = 2\n");
    env.sandbox.crm.set_limit(2, Duration::from_secs(1));
    let lines: Vec<String> = (1..=4)
        .map(|n| format!(r#"{{"entity": "produtos", "record_id": "{n}", "action": "create", "payload": {{"nome": "P{n}"}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    enqueue(&env, &refs);
    let out = env.run(&["sync-queue", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(env.sandbox.crm.rejected_429() >= 1);
    assert_eq!(env.sandbox.crm.records("produtos").len(), 4);
    let attempts: i64 = env.query("SELECT SUM(attempts) FROM sync_queue");
    assert_eq!(attempts, 0, "a 429 is not the item's fault");
}

#[test]
fn the_shared_rate_limit_spaces_requests_out() {
    let env = Env::new();
    with_crm(
        &env,
        "[crm]\nrate_limit_per_minute = 600\nconcurrency = 4\n",
    );
    let lines: Vec<String> = (1..=5)
        .map(|n| format!(r#"{{"entity": "produtos", "record_id": "{n}", "action": "create", "payload": {{"nome": "P{n}"}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    enqueue(&env, &refs);
    let started = std::time::Instant::now();
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    // 10 a second, no burst: 5 requests cannot take less than 0.4 s.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let bucket: i64 = env.query("SELECT COUNT(*) FROM rate_limits WHERE name = 'crm'");
    assert_eq!(
        bucket, 1,
        "the bucket lives in the store, shared by every process"
    );
}

#[test]
fn transient_failures_back_off_then_fail_visibly() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "1", "action": "create", "payload": {"nome": "A"}}"#,
        ],
    );
    env.sandbox.faults.push(
        Route::Crm,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        3,
    );
    let at = |secs: i64| {
        (chrono::DateTime::parse_from_rfc3339(NOW).unwrap() + chrono::Duration::seconds(secs))
            .to_rfc3339()
    };
    let due = || -> String { env.query("SELECT due_at FROM sync_queue") };
    assert_eq!(env.run(&["sync-queue"]).code, 1);
    assert_eq!(
        due(),
        "2025-11-10T15:00:02.000Z",
        "2 s after the first failure"
    );
    // Not due yet: nothing is sent.
    assert_eq!(
        env.cmd(&["sync-queue"])
            .env("CRM_JOBS_NOW", at(1))
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    assert_eq!(env.sandbox.faults.seen(Route::Crm), 1);
    assert_eq!(
        env.cmd(&["sync-queue"])
            .env("CRM_JOBS_NOW", at(2))
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    assert_eq!(due(), "2025-11-10T15:00:06.000Z", "then 4 s");
    let last = env
        .cmd(&["sync-queue"])
        .env("CRM_JOBS_NOW", at(6))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(
        stderr.contains("the CRM answered 503 Service Unavailable; failed after 3 attempts"),
        "{stderr}"
    );
    let (status, attempts): (String, i64) = env
        .db()
        .query_row("SELECT status, attempts FROM sync_queue", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert_eq!(env.sandbox.faults.seen(Route::Crm), 3);
}

#[test]
fn a_second_run_waits_its_turn_and_nothing_is_sent_twice() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    let lines: Vec<String> = (1..=3)
        .map(|n| format!(r#"{{"entity": "produtos", "record_id": "{n}", "action": "create", "payload": {{"nome": "P{n}"}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    enqueue(&env, &refs);
    env.sandbox.faults.hold(Route::Crm);
    let first = env.spawn(&["sync-queue"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::Crm, 1, WAIT), 1);
    let second = env.run(&["sync-queue"]);
    assert_eq!(second.code, 75, "{second:?}");
    env.sandbox.faults.release_all();
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(env.sandbox.crm.creates(), 3);
    assert_eq!(env.sandbox.crm.duplicates(), 0);
}

#[test]
fn a_killed_run_is_resent_with_the_same_key_and_creates_nothing_twice() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    let lines: Vec<String> = (1..=4)
        .map(|n| format!(r#"{{"entity": "produtos", "record_id": "{n}", "action": "create", "payload": {{"nome": "P{n}"}}}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    enqueue(&env, &refs);
    env.sandbox.faults.hold_after(Route::Crm, 2);
    let mut child = env.spawn(&["sync-queue"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::Crm, 1, WAIT), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    let processing: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'processing'");
    assert!(processing >= 1);

    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("item(s) were in flight when a process died (unknown outcome): resent with the same idempotency key"), "{out:?}");
    assert!(
        out.stderr
            .contains("run #1 of `sync-queue` was left running by a process that died"),
        "{out:?}"
    );
    assert_eq!(env.sandbox.crm.records("produtos").len(), 4);
    assert_eq!(env.sandbox.crm.duplicates(), 0);
    let unknown: i64 =
        env.query("SELECT COUNT(*) FROM sync_queue WHERE unknown_outcome = 1 AND status = 'done'");
    assert!(unknown >= 1);
}

#[test]
fn cleanup_keeps_what_is_recent_and_removes_the_rest_in_batches() {
    let env = Env::new();
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "1", "action": "create", "payload": {"nome": "A"}}"#,
        ],
    );
    {
        let db = env.db();
        db.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
             INSERT INTO sync_log (item_id, at, request) SELECT 1, '2025-09-01T00:00:00.000Z', 'POST /clientes' FROM n;
             INSERT INTO sync_log (item_id, at, request) VALUES (1, '2025-11-09T00:00:00.000Z', 'POST /clientes');
             INSERT INTO sync_queue (entity, record_id, action, status, finished_at) VALUES
                ('clientes', 'old-done', 'create', 'done', '2025-10-01T00:00:00.000Z'),
                ('clientes', 'new-done', 'create', 'done', '2025-11-08T00:00:00.000Z'),
                ('clientes', 'old-failed', 'create', 'failed', '2025-10-20T00:00:00.000Z'),
                ('clientes', 'older-failed', 'create', 'failed', '2025-09-01T00:00:00.000Z');",
        )
        .unwrap();
    }
    let dry = env.run(&["cleanup", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("sync_log\t2500\tolder than 30 days"),
        "{dry:?}"
    );
    let out = env.run(&["cleanup", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["sync_log"], 2500);
    assert_eq!(summary["counters"]["queue_done"], 1);
    assert_eq!(
        summary["counters"]["queue_failed"], 1,
        "failures are kept longer"
    );
    let left: i64 = env.query("SELECT COUNT(*) FROM sync_log");
    assert_eq!(left, 1);
    let kept: String = env.query(
        "SELECT group_concat(record_id) FROM (SELECT record_id FROM sync_queue ORDER BY id)",
    );
    assert_eq!(kept, "1,new-done,old-failed");
}

#[test]
fn bad_lines_are_reported_and_the_rest_is_enqueued() {
    let env = Env::new();
    let out = enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "1", "action": "create", "payload": {"nome": "A"}}"#,
            r#"{"entity": "fornecedores", "record_id": "1", "action": "create", "payload": {}}"#,
            r#"not json"#,
            r#"{"entity": "clientes", "record_id": "2", "action": "merge", "payload": {}}"#,
            r#"{"entity": "clientes", "action": "create", "payload": {}}"#,
            r#"{"entity": "clientes", "record_id": "3", "action": "update"}"#,
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    let f = env.path("changes.jsonl");
    let f = f.display();
    for expected in [
        format!(
            "{f}:2: `entity` = `fornecedores` is not one of atividades, clientes, produtos, vendas (`[crm.resources]`); line skipped"
        ),
        format!("{f}:3: not JSON (expected ident at line 1 column 2); line skipped"),
        format!(
            "{f}:4: `action` = `merge` is not one of create, update, delete, upsert; line skipped"
        ),
        format!("{f}:5: `record_id` is missing; line skipped"),
        format!("{f}:6: `payload` is missing (needed to update); line skipped"),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in {out:?}"
        );
    }
    let n: i64 = env.query("SELECT COUNT(*) FROM sync_queue");
    assert_eq!(n, 1);
    let export = env.run(&["export", "queue", "--format", "csv"]);
    assert!(
        export
            .stdout
            .starts_with("id,entity,record_id,action,status"),
        "{export:?}"
    );
}

#[test]
fn rows_inserted_by_a_host_are_sent_and_a_bad_one_fails_alone() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    // Create the store, then insert as a host application would, with only what it knows.
    enqueue(&env, &[]);
    env.db()
        .execute_batch(
            "INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('fornecedores', 'F1', 'create', '{}');
             INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('clientes', 'H1', 'upsert', '{\"nome\": \"Host\"}');
             INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('produtos', 'H2', 'create', 'not json');",
        )
        .unwrap();
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("item #1: entity `fornecedores` has no `[crm.resources]` path"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("item #3: the payload is not JSON"),
        "{out:?}"
    );
    let s: Vec<String> = statuses(&env).into_iter().map(|(_, s)| s).collect();
    assert_eq!(s, vec!["failed", "done", "failed"]);
    let (priority, key): (i64, String) = env
        .db()
        .query_row(
            "SELECT priority, idempotency_key FROM sync_queue WHERE record_id = 'H1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((priority, key.as_str()), (3, "crm-jobs-2"));
}

#[test]
fn a_change_after_an_unknown_outcome_waits_for_it_and_is_applied() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "U1", "action": "create", "payload": {"nome": "Antes"}}"#,
        ],
    );
    env.sandbox.faults.hold(Route::Crm);
    let mut child = env.spawn(&["sync-queue"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::Crm, 1, WAIT), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "U1", "action": "update", "payload": {"nome": "Depois"}}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The unknown create is resent first with its own key, then the update goes out as a PUT:
    // nothing is created twice and the newer payload is applied.
    let requests = log_requests(&env);
    assert!(
        requests.ends_with(&[
            "POST /clientes".to_string(),
            format!("PUT /clientes/{}", env.sandbox.crm.records("clientes")[0].0)
        ]),
        "{requests:?}"
    );
    assert_eq!(env.sandbox.crm.duplicates(), 0);
    let records = env.sandbox.crm.records("clientes");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1["nome"], "Depois");
}
