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
    // The sale goes first by priority and waits for its client; woken when the client is
    // synced, it is claimed again before the lower-priority items, waits for its product, and
    // goes out as soon as the product has a CRM id, before the atividade (priority 2).
    assert_eq!(
        log_requests(&env),
        vec![
            "deferred",
            "POST /clientes",
            "deferred",
            "POST /produtos",
            "POST /vendas",
            "POST /orcamentos"
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
    // A configuration failure, as renew's refused Stripe key or SMTP password.
    assert_eq!(out.status.code(), Some(78), "{stderr}");
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

/// Items of `entity` `prefix1..=prefixN`, one JSON line each, from `payload(n)`.
fn lines(
    entity: &str,
    action: &str,
    ids: std::ops::RangeInclusive<u32>,
    payload: impl Fn(u32) -> String,
) -> Vec<String> {
    ids.map(|n| {
        format!(
            r#"{{"entity": "{entity}", "record_id": "{n}", "action": "{action}", "payload": {}}}"#,
            payload(n)
        )
    })
    .collect()
}

fn enqueue_all(env: &Env, groups: &[Vec<String>]) {
    let all: Vec<&str> = groups.iter().flatten().map(String::as_str).collect();
    let out = enqueue(env, &all);
    assert_eq!(out.code, 0, "{out:?}");
}

/// One column of one queue item.
fn item_field<T: rusqlite::types::FromSql>(env: &Env, id: i64, column: &str) -> T {
    env.query(&format!("SELECT {column} FROM sync_queue WHERE id = {id}"))
}

/// Appends `text` to the config file.
fn append_config(env: &Env, text: &str) {
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(env.path("config.toml"), format!("{config}\n{text}")).unwrap();
}

/// Puts `[sync]` keys in the config.
pub(crate) fn with_sync(env: &Env, keys: &str) {
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[sync]\n{keys}\n\n{config}"),
    )
    .unwrap();
}

// Issue 13, 1: `POST /orcamentos` went out with the ERP's `cliente_id` and failed for good with
// `422 Cliente 7 não encontrado.`, under the README's quick-start config (whose
// `[crm.references]` lists vendas only, which dropped the other defaults).
#[test]
fn atividades_carry_references_and_config_tables_merge_with_the_defaults() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    append_config(
        &env,
        "[crm.references]\nvendas = [\"/cliente_id=clientes\", \"/produtos/*/produto/id=produtos\"]\n\n[sync.priorities]\nvendas = 9\n",
    );
    let check = env.run(&["--json", "config", "check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let config: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(
        config["config"]["crm"]["references"]["atividades"],
        serde_json::json!(["/cliente_id=clientes", "/produtos/*/produto/id=produtos"]),
        "the default of an entity the file does not name stays"
    );
    assert_eq!(
        config["config"]["sync"]["priorities"],
        serde_json::json!({"atividades": 2, "clientes": 3, "produtos": 3, "vendas": 9})
    );
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": 7, "action": "upsert", "payload": {"nome": "Maria", "cpf_cnpj": "708.990.571-36"}}"#,
            r#"{"entity": "produtos", "record_id": "P1", "action": "upsert", "payload": {"nome": "Fibra 500", "codigo_barras": "7891000100103"}}"#,
            r#"{"entity": "atividades", "record_id": "A1", "action": "create", "payload": {"cliente_id": 7, "descricao": "instalar", "produtos": [{"produto": {"id": "P1", "quantidade": "2"}}]}}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    let cliente = &env.sandbox.crm.records("clientes")[0].0;
    let produto = &env.sandbox.crm.records("produtos")[0].0;
    let orcamentos = env.sandbox.crm.records("orcamentos");
    assert_eq!(orcamentos.len(), 1);
    assert_eq!(
        orcamentos[0].1,
        serde_json::json!({"id": orcamentos[0].0, "cliente_id": cliente, "descricao": "instalar", "produtos": [{"produto": {"id": produto, "quantidade": "2"}}]})
    );

    // An entity's own entry replaces its default: without references the CRM refuses the
    // ERP's id, as the real one did.
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    append_config(&env, "[crm.references]\natividades = []\n");
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": 7, "action": "upsert", "payload": {"nome": "Maria"}}"#,
            r#"{"entity": "atividades", "record_id": "A1", "action": "create", "payload": {"cliente_id": "7"}}"#,
        ],
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(
            "item #2 (create atividades A1): the CRM answered 422: Cliente 7 não encontrado."
        ),
        "{out:?}"
    );
}

// Issue 13, 2: four 429s each restarted a 42 s pause. Here four requests are out at once; the
// first answer, a 429, starts the pause; the three others, 429s too, come 300 ms later: they
// answer requests that were in flight when the pause began, and do not extend it.
#[test]
fn a_429_pauses_everyone_once_from_its_arrival() {
    let env = Env::new();
    with_crm(&env, "[crm]\nrate_limit_per_minute = 0\nconcurrency = 4\n");
    enqueue_all(
        &env,
        &[lines("produtos", "create", 1..=4, |n| {
            format!(r#"{{"nome": "P{n}"}}"#)
        })],
    );
    env.sandbox.faults.push(
        Route::Crm,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    env.sandbox.faults.push(
        Route::Crm,
        Fault::Late {
            status: 429,
            retry_after: Some(1),
            after_ms: 300,
        },
        3,
    );
    env.sandbox.faults.hold(Route::Crm);
    let child = env.spawn(&["sync-queue"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::Crm, 4, WAIT), 4);
    let released = std::time::Instant::now();
    env.sandbox.faults.release_all();
    let out = child.wait_with_output().unwrap();
    let took = released.elapsed();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (from, until): (i64, i64) = env
        .db()
        .query_row(
            "SELECT paused_from_ms, paused_until_ms FROM rate_limits WHERE name = 'crm'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        until - from,
        1000,
        "one pause, Retry-After long from the first 429's arrival"
    );
    // Four pauses one after the other would take 4 s.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(env.sandbox.crm.records("produtos").len(), 4);
    let counters: String = env.query("SELECT counters FROM runs");
    let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
    assert_eq!(counters["rate_limited"], 4);
    assert_eq!(counters["done"], 4);
}

// Issue 13, 2: one answer of `Retry-After: 86400000` stalled every later run, each reporting
// `success`.
#[test]
fn a_pause_is_capped_and_a_run_that_could_send_nothing_says_so() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    with_sync(&env, "max_retry_after_secs = 1");
    enqueue_all(
        &env,
        &[lines("produtos", "create", 1..=1, |_| {
            r#"{"nome": "P1"}"#.into()
        })],
    );
    env.sandbox.faults.push(
        Route::Crm,
        Fault::Status {
            status: 429,
            retry_after: Some(86_400_000),
        },
        1,
    );
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 1, "{out:?}");
    let message = "nothing was sent: the CRM asked to wait 86400000s (more than `[sync] max_retry_after_secs` = 1s): this run stopped sending; the items wait, untouched, and every process waits 1s; the next run tries again";
    assert!(out.stderr.contains(&format!("error: {message}")), "{out:?}");
    let (from, until): (i64, i64) = env
        .db()
        .query_row(
            "SELECT paused_from_ms, paused_until_ms FROM rate_limits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(until - from, 1000, "the stored pause is capped");
    assert_eq!(item_field::<String>(&env, 1, "status"), "pending");
    assert_eq!(item_field::<i64>(&env, 1, "attempts"), 0);
    let status = env.run(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("sync-queue run #1 failed: {message}")),
        "{status:?}"
    );
    let json = env.run(&["--json", "status"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let job = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "sync-queue")
        .unwrap();
    assert_eq!(job["consecutive_failures"], 1, "a failure streak starts");

    // The next run waits out what is left of the capped pause, and sends.
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.crm.records("produtos").len(), 1);
}

// Issue 13, 3: a create and a later partial update were folded into one create carrying only
// the update's fields: clientes reached the CRM without e-mail, phone, addresses.
#[test]
fn folding_changes_keeps_every_field() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "21", "action": "create", "payload": {"nome": "Ana", "email": "ana@example.com", "enderecos": [{"endereco": {"cidade": "Goiânia"}}], "contato": {"nome": "Bia", "cargo": "mãe"}}}"#,
            r#"{"entity": "clientes", "record_id": "21", "action": "update", "payload": {"telefone": "62 99999-0000", "contato": {"cargo": "irmã"}}}"#,
            r#"{"entity": "clientes", "record_id": "22", "action": "create", "payload": {"nome": "Caio"}}"#,
        ],
    );
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    let records = env.sandbox.crm.records("clientes");
    let ana = records.iter().find(|(_, r)| r["nome"] == "Ana").unwrap();
    assert_eq!(
        ana.1,
        serde_json::json!({"id": ana.0, "nome": "Ana", "email": "ana@example.com", "telefone": "62 99999-0000", "enderecos": [{"endereco": {"cidade": "Goiânia"}}], "contato": {"nome": "Bia", "cargo": "irmã"}})
    );
    // Update + update of a synced record: one PUT with both.
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "22", "action": "update", "payload": {"nome": "Caio", "email": "caio@example.com"}}"#,
            r#"{"entity": "clientes", "record_id": "22", "action": "update", "payload": {"telefone": "11 3333-4444"}}"#,
        ],
    );
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    let caio = env
        .sandbox
        .crm
        .records("clientes")
        .into_iter()
        .find(|(_, r)| r["nome"] == "Caio")
        .unwrap();
    assert_eq!(
        caio.1,
        serde_json::json!({"id": caio.0, "nome": "Caio", "email": "caio@example.com", "telefone": "11 3333-4444"})
    );
    assert_eq!(
        log_requests(&env),
        vec![
            "POST /clientes".to_string(),
            "POST /clientes".to_string(),
            format!("PUT /clientes/{}", caio.0)
        ]
    );
}

// Issue 13, 4 and 5: a failed item could only be enqueued again, which made a duplicate when
// its first request had reached the CRM; and the records waiting for it waited for ever.
#[test]
fn a_failed_item_is_sent_again_safely_and_its_waiters_are_shown() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    env.sandbox.crm.set_idempotency(false);
    enqueue(
        &env,
        &[
            r#"{"entity": "clientes", "record_id": "31", "action": "create", "payload": {"nome": "Bia", "cpf_cnpj": "708.990.571-36"}}"#,
            r#"{"entity": "vendas", "record_id": "V31", "action": "create", "payload": {"cliente_id": "31", "valor_total": "99.90"}}"#,
        ],
    );
    // The CRM creates the client, then answers 503.
    env.sandbox.faults.push_after_commit(Route::Crm, 503, 1);
    let out = env.run(&["sync-queue", "--max-attempts", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(env.sandbox.faults.faulted_after_commit(Route::Crm), 1);
    assert_eq!(env.sandbox.crm.records("clientes").len(), 1);
    assert_eq!(item_field::<String>(&env, 1, "status"), "failed");
    assert!(item_field::<bool>(&env, 1, "unknown_outcome"));

    let status = env.run(&["status"]);
    assert!(
        status.stdout.contains(
            "1 item(s) wait for a failed item (`crm-jobs sync-queue --retry-failed` sends it again):\n           #2 (vendas V31) waits for clientes:31, item #1 failed: the CRM answered 503 Service Unavailable"
        ),
        "{status:?}"
    );
    let export = env.run(&["export", "queue", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&export.stdout).unwrap();
    assert_eq!(rows[1]["blocked_by_item"], 1);
    assert_eq!(
        rows[1]["blocked_by_error"],
        "the CRM answered 503 Service Unavailable"
    );
    assert_eq!(rows[0]["blocked_by_item"], serde_json::Value::Null);

    for (args, message) in [
        (
            vec!["sync-queue", "--retry-failed", "--id", "2"],
            "error: item #2 is `pending`, not `failed`: `--retry-failed` sends failed items only; nothing was changed",
        ),
        (
            vec!["sync-queue", "--retry-failed", "--id", "99"],
            "error: there is no item #99 in the queue; nothing was changed",
        ),
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains(message), "{out:?}");
    }

    let out = env.run(&["sync-queue", "--retry-failed", "--id", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let clientes = env.sandbox.crm.records("clientes");
    assert_eq!(clientes.len(), 1, "the client the CRM had is adopted");
    assert!(env.sandbox.crm.duplicate_keys("clientes").is_empty());
    let id = &clientes[0].0;
    assert_eq!(
        log_requests(&env)[2..],
        [
            "GET /clientes?cpf_cnpj=…".to_string(),
            format!("PUT /clientes/{id}"),
            "POST /vendas".to_string()
        ]
    );
    assert_eq!(
        env.sandbox.crm.records("vendas")[0].1["cliente_id"],
        id.as_str()
    );
    assert_eq!(item_field::<String>(&env, 1, "status"), "done");
    assert_eq!(
        item_field::<String>(&env, 1, "idempotency_key"),
        "crm-jobs-1"
    );
    assert!(
        !item_field::<bool>(&env, 1, "unknown_outcome"),
        "settled by the lookup"
    );
    let note: String =
        env.query("SELECT error FROM sync_log WHERE request LIKE 'GET %' ORDER BY id DESC");
    assert_eq!(
        note,
        format!("found at the CRM by `cpf_cnpj` as {id}: that record is adopted and updated")
    );
}

// Issue 13, 6: after a killed run, 14 items were flagged `unknown_outcome` where 4 requests were
// in flight.
#[test]
fn after_a_kill_only_the_requests_in_flight_are_unknown() {
    let env = Env::new();
    with_crm(&env, "[crm]\nrate_limit_per_minute = 0\nconcurrency = 4\n");
    enqueue_all(
        &env,
        &[lines("produtos", "create", 1..=20, |n| {
            format!(r#"{{"nome": "P{n}"}}"#)
        })],
    );
    env.sandbox.faults.hold_after(Route::Crm, 2);
    let mut child = env.spawn(&["sync-queue"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::Crm, 4, WAIT), 4);
    child.kill().unwrap();
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    let processing: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'processing'");
    assert_eq!(processing, 18, "claimed in one round");

    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("4 item(s) were in flight when a process died (unknown outcome)"),
        "{out:?}"
    );
    let unknown: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE unknown_outcome = 1");
    assert_eq!(unknown, 4);
    let done: i64 = env.query("SELECT COUNT(*) FROM sync_queue WHERE status = 'done'");
    assert_eq!(done, 20);
    assert_eq!(env.sandbox.crm.records("produtos").len(), 20);
    assert_eq!(env.sandbox.crm.duplicates(), 0);
}

// Issue 13, 6: an item woken because its reference was just synced went out after the
// lower-priority items claimed with it.
#[test]
fn a_woken_item_goes_out_in_priority_order() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    enqueue_all(
        &env,
        &[
            lines("vendas", "create", 1..=1, |_| {
                r#"{"cliente_id": "C1"}"#.into()
            }),
            vec![
                r#"{"entity": "clientes", "record_id": "C1", "action": "create", "payload": {"nome": "Ana"}}"#.into(),
            ],
            lines("atividades", "create", 1..=3, |n| {
                format!(r#"{{"descricao": "tarefa {n}"}}"#)
            }),
        ],
    );
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    assert_eq!(
        log_requests(&env),
        vec![
            "deferred",
            "POST /clientes",
            "POST /vendas",
            "POST /orcamentos",
            "POST /orcamentos",
            "POST /orcamentos"
        ]
    );
}

// Issue 13, 6: the ERP's queue table names entities in the singular.
#[test]
fn singular_entity_names_are_synonyms() {
    let env = Env::new();
    with_crm(&env, NO_LIMIT);
    let out = enqueue(
        &env,
        &[
            r#"{"entity": "cliente", "record_id": "40", "action": "create", "payload": {"nome": "Rui", "email": "rui@example.com"}}"#,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    env.db()
        .execute_batch(
            "INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('clientes', '40', 'update', '{\"telefone\": \"1\"}');
             INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('venda', 'V40', 'create', '{\"cliente_id\": \"40\"}');
             INSERT INTO sync_queue (entity, record_id, action, payload) VALUES ('atividade', 'A40', 'create', '{\"descricao\": \"ligar\"}');",
        )
        .unwrap();
    let out = env.run(&["sync-queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    let entities: String = env.query(
        "SELECT group_concat(entity || ':' || status, ' ') FROM (SELECT entity, status FROM sync_queue ORDER BY id)",
    );
    assert_eq!(
        entities,
        "clientes:superseded clientes:done vendas:done atividades:done"
    );
    let cliente = &env.sandbox.crm.records("clientes")[0];
    assert_eq!(
        cliente.1,
        serde_json::json!({"id": cliente.0, "nome": "Rui", "email": "rui@example.com", "telefone": "1"})
    );
    assert_eq!(
        env.sandbox.crm.records("vendas")[0].1["cliente_id"],
        cliente.0.as_str()
    );
    assert_eq!(env.sandbox.crm.records("orcamentos").len(), 1);
}
