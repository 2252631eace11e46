//! Issue 15's hardening, as an operator meets it: values that cannot forge a log line,
//! environments that cannot crash a job.

use std::os::unix::ffi::OsStringExt;

use crate::support::*;

#[test]
fn a_value_with_line_breaks_or_bidi_controls_cannot_forge_a_log_line() {
    let env = Env::new();
    let reason = "x\n WARN forged log line\u{202e}\u{1b}[31m";
    let out = env.run(&["pause", "fetch-invoices", "--reason", reason]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stderr.lines().any(|l| l.starts_with(" WARN forged")),
        "a forged line: {out:?}"
    );
    assert!(
        out.stderr
            .contains(r"x\n WARN forged log line\u{202e}\u{1b}[31m"),
        "the reason is shown, escaped: {out:?}"
    );
    assert!(!out.stderr.contains('\u{202e}') && !out.stderr.contains('\u{1b}'));
}

#[test]
fn an_environment_variable_that_is_not_utf8_stops_nothing_unless_it_is_ours() {
    let env = Env::new();
    let not_utf8 = std::ffi::OsString::from_vec(vec![0xff, 0xfe]);
    let o = env.cmd(&["status"]).env("FOO", &not_utf8).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = env
        .cmd(&["status"])
        .env("CRM_JOBS_FETCH_LIMIT", &not_utf8)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "error: environment variable `CRM_JOBS_FETCH_LIMIT` is not UTF-8 text: set it again in UTF-8"
        ),
        "{stderr}"
    );
}

#[test]
fn a_config_that_never_ends_is_refused_after_a_megabyte() {
    let env = Env::new();
    let out = env.run(&["--config", "/dev/zero", "config", "check"]);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr
            .contains("error: cannot read config file `/dev/zero`: it is larger than 1024 kB"),
        "{out:?}"
    );
}

#[test]
fn csv_exports_neutralize_cells_a_spreadsheet_would_run() {
    let env = Env::new();
    let file = env.path("c.csv");
    std::fs::write(
        &file,
        format!(
            "contrato,cpf,nome,data_instalacao\n\"=cmd|' /C calc'!A0\",{},\"+SUM(1+1)\",2025-06-05\n",
            cpf(41).digits()
        ),
    )
    .unwrap();
    assert_eq!(
        env.run(&["import", "contracts", file.to_str().unwrap()])
            .code,
        0
    );
    let out = env.run(&["export", "invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let first = out.stdout.lines().nth(1).unwrap();
    assert!(first.starts_with("'=cmd|' /C calc'!A0,"), "{first}");
    assert!(first.contains(",'+SUM(1+1),"), "{first}");
    let out = env.run(&["export", "invoices", "--raw-cells"]);
    let first = out.stdout.lines().nth(1).unwrap();
    assert!(first.starts_with("=cmd|' /C calc'!A0,"), "{first}");
}

#[test]
fn durations_and_counts_out_of_their_range_are_config_errors_not_panics() {
    let env = Env::new();
    for (var, value, message) in [
        (
            "CRM_JOBS_CLEANUP_SYNC_LOG_DAYS",
            "4294967295",
            "`[cleanup] sync_log_days` = 4294967295 is out of range (0 to 36500)",
        ),
        (
            "CRM_JOBS_RENEW_DAYS",
            "4294967295",
            "`[renew] days` = 4294967295 is out of range (1 to 60)",
        ),
        (
            "CRM_JOBS_RENEW_STRIPE_GRACE_DAYS",
            "4294967295",
            "`[renew] stripe_grace_days` = 4294967295 is out of range (0 to 365)",
        ),
        (
            "CRM_JOBS_SYNC_BACKOFF_SECS",
            "9223372036854775807",
            "`[sync] backoff_secs` = 9223372036854775807 is out of range (0 to 86400)",
        ),
        (
            "CRM_JOBS_SYNC_DEFER_SECS",
            "9223372036854775807",
            "`[sync] defer_secs` = 9223372036854775807 is out of range (0 to 86400)",
        ),
    ] {
        for args in [&["config", "check"][..], &["cleanup"]] {
            let o = env.cmd(args).env(var, value).output().unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(78), "{var} {args:?}: {stderr}");
            assert!(stderr.contains(message), "{var}: {stderr}");
        }
    }
}

#[test]
fn cleanup_gives_the_freed_pages_back_and_converts_an_older_store_once() {
    let env = Env::new();
    // A store made before incremental vacuum: the file exists (auto_vacuum NONE) when the
    // schema is first laid.
    std::fs::create_dir_all(env.path("store")).unwrap();
    rusqlite::Connection::open(env.path("store/crm.db"))
        .unwrap()
        .execute_batch("CREATE TABLE legacy (x); DROP TABLE legacy;")
        .unwrap();
    assert_eq!(env.run(&["status"]).code, 0);
    let db = env.db();
    let mode: i64 = db
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 0);
    db.execute_batch(
        "INSERT INTO sync_queue (id, entity, record_id, action, payload, priority) VALUES (1, 'produtos', '1', 'create', '{}', 3);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO sync_log (item_id, at, request, status, duration_ms)
         SELECT 1, CASE i % 2 WHEN 0 THEN '2020-01-01T00:00:00.000Z' ELSE '2099-01-01T00:00:00.000Z' END,
                'POST /produtos ' || hex(randomblob(40)), 200, 20 FROM n;",
    )
    .unwrap();
    drop(db);
    let out = env.run(&["cleanup", "--only", "sync_log"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("removed 10000 sync_log, "), "{out:?}");
    assert!(
        out.stderr.contains(
            "MB given back to the disk (the store was converted to incremental vacuum, once)"
        ),
        "{out:?}"
    );
    let db = env.db();
    let mode: i64 = db
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2, "incremental from now on");
    let free: i64 = db
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0, "no free page left in the file");
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM sync_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 10000, "the recent half is kept");
    // Removing the rest now frees pages incrementally, without another conversion.
    db.execute_batch("UPDATE sync_log SET at = '2020-01-01T00:00:00.000Z'")
        .unwrap();
    drop(db);
    let out = env.run(&["--json", "cleanup", "--only", "sync_log"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("converted"), "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        summary["counters"]["bytes_given_back"].as_i64().unwrap() > 500_000,
        "{summary}"
    );
}

#[test]
fn an_import_that_fails_half_way_leaves_the_store_as_it_was() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    // The store refuses the third row, as a full disk would.
    env.db()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON contracts WHEN NEW.contract_number = 'C3'
             BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END;",
        )
        .unwrap();
    let file = env.path("c.csv");
    let rows: String = (1..=5)
        .map(|i| format!("C{i},{},ANA,2025-06-05\n", cpf(60 + i).digits()))
        .collect();
    std::fs::write(&file, format!("contrato,cpf,nome,data_instalacao\n{rows}")).unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "error: nothing of `{}` was imported (the store is as it was)",
            file.display()
        )) && out.stderr.contains("database or disk is full (simulated)"),
        "{out:?}"
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    let invoices: i64 = env.query("SELECT COUNT(*) FROM invoices");
    assert_eq!(
        (contracts, invoices),
        (0, 0),
        "not the first two rows either"
    );
}

#[test]
fn many_bad_rows_print_twenty_lines_and_all_go_to_the_rejects_file() {
    let env = Env::new();
    let file = env.path("c.csv");
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    csv.push_str(&format!("OK1,{},ANA,2025-06-05\n", cpf(70).digits()));
    for i in 0..25 {
        csv.push_str(&format!("B{i},123,BRUNO,2025-06-05\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let rejects = env.path("rejeitadas.csv");
    let out = env.run(&[
        "-q",
        "import",
        "contracts",
        file.to_str().unwrap(),
        "--rejects",
        rejects.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr.matches("; row skipped").count(), 20, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}: 5 more row(s) skipped, not shown (all of them are in `{}`)",
            file.display(),
            rejects.display()
        )),
        "{out:?}"
    );
    let written = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 26, "{written}");
    assert_eq!(lines[0], "place,reason,row...");
    assert!(
        lines[25].starts_with(&format!("{}:27,", file.display()))
            && lines[25].ends_with(",B24,123,BRUNO,2025-06-05"),
        "{}",
        lines[25]
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    assert_eq!(contracts, 1);
}

#[test]
fn a_negative_amount_is_refused_with_its_row() {
    let env = Env::new();
    let file = env.path("c.csv");
    std::fs::write(
        &file,
        format!(
            "contrato,cpf,nome,data_instalacao,valor\nN1,{},ANA,2025-06-05,\"-R$ 5,00\"\n",
            cpf(80).digits()
        ),
    )
    .unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}:2: `valor`: `-R$ 5,00` is negative: an amount here is R$ 0,00 or more; row skipped",
            file.display()
        )),
        "{out:?}"
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    assert_eq!(contracts, 0);
}

#[test]
fn dates_outside_2000_to_2100_and_sales_points_that_are_not_codes_are_refused() {
    let env = Env::new();
    let file = env.path("c.csv");
    std::fs::write(
        &file,
        format!(
            "contrato,cpf,nome,data_instalacao\nD1,{},ANA,9999-12-31\nD2,{},BIA,2025-06-05\n",
            cpf(90).digits(),
            cpf(91).digits()
        ),
    )
    .unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}:2: `data_instalacao` = `9999-12-31` is outside the years 2000 to 2100; row skipped",
            file.display()
        )),
        "{out:?}"
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    assert_eq!(contracts, 1);

    for (pv, ok) in [
        ("17308", true),
        ("17.308", true),
        ("17.308.999", false),
        ("1e20", false),
    ] {
        assert_eq!(
            crm_jobs::jobs::credentials::sales_point_code(pv).is_some(),
            ok,
            "{pv}"
        );
    }
}

#[test]
fn a_csv_import_refuses_an_endless_line_a_nul_and_a_quote_left_open() {
    let env = Env::new();
    let out = env.run(&["import", "contracts", "/dev/zero"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "error: `/dev/zero`: line 1 is longer than 1 MB: it is not a CSV file of rows; nothing was imported"
        ),
        "{out:?}"
    );
    let file = env.path("c.csv");
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    csv.push_str(&format!("Q1,{},AN\u{0}A,2025-06-05\n", cpf(95).digits()));
    csv.push_str(&format!("Q2,{},BIA,2025-06-05\n", cpf(96).digits()));
    // A quote opened and never closed: the rest of the file is one field.
    csv.push_str(&format!("Q3,{},\"CARLA,2025-06-05\n", cpf(97).digits()));
    for i in 0..2000 {
        csv.push_str(&format!("R{i},{},NOME {i},2025-06-05\n", cpf(98).digits()));
    }
    std::fs::write(&file, csv).unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    assert!(
        out.stderr.contains(&format!(
            "{f}:2: the row has a NUL character in a field; row skipped"
        )),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!("{f}:4: the row has a field of ")) && out.stderr.contains(
            "more than 64 kB (a quote opened on this line and never closed swallows the rows after it); row skipped"
        ),
        "{out:?}"
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    assert_eq!(contracts, 1, "only Q2");
}

#[test]
fn a_subscription_import_the_store_gives_up_on_leaves_nothing() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    // The store gives up the whole transaction at the third user, as on a full disk.
    env.db()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON users WHEN NEW.external_id = 'u3'
             BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full (simulated)'); END;",
        )
        .unwrap();
    let file = env.path("subs.jsonl");
    let lines: String = (1..=5)
        .map(|i| {
            format!(
                "{{\"type\": \"user\", \"id\": \"u{i}\", \"name\": \"U{i}\", \"email\": \"u{i}@example.com\"}}\n"
            )
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "error: nothing of `{}` was imported (the store is as it was)",
            file.display()
        )),
        "{out:?}"
    );
    let users: i64 = env.query("SELECT COUNT(*) FROM users");
    assert_eq!(users, 0, "not the first two, nor the last two one by one");
}

/// Issue 15: every rule of `cleanup` finds its rows through an index on the column it compares
/// with its cutoff (migration 0011), never by reading the whole table: a store of a million
/// interleaved rows is cleaned in seconds, and the rows it keeps are not read.
#[test]
fn every_cleanup_rule_finds_its_rows_through_an_index() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    let db = env.db();
    let mut queries: Vec<(String, String)> = crm_jobs::store::RETENTION
        .iter()
        .map(|r| (r.name.to_string(), r.select_sql()))
        .collect();
    queries.push((
        "sessions".into(),
        crm_jobs::store::SESSIONS_TO_SOFT_DELETE.into(),
    ));
    queries.push((
        "payments".into(),
        crm_jobs::store::PAYMENTS_TO_CANCEL.into(),
    ));
    for (rule, sql) in queries {
        let plan: Vec<String> = db
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params!["2025-01-01T00:00:00.000Z", 1000], |r| {
                r.get(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join(" | ");
        assert!(
            plan.starts_with("SEARCH ") && plan.contains(" INDEX ") && !plan.contains("SCAN "),
            "rule `{rule}`: {plan}"
        );
    }
}

/// Issue 15: a JSON line over 1 MB (`enqueue`, `import subscriptions`) stops the input at that
/// line, named `FILE:LINE`, after reading no more than 1 MB of it; nothing is written.
#[test]
fn a_json_line_over_a_megabyte_is_refused_with_its_place() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    let long = format!(
        "{{\"type\": \"user\", \"id\": \"u2\", \"name\": \"{}\", \"email\": \"u2@example.com\"}}",
        "A".repeat(1024 * 1024)
    );
    let file = env.path("subs.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"type\": \"user\", \"id\": \"u1\", \"name\": \"U1\", \"email\": \"u1@example.com\"}}\n\n{long}\n"
        ),
    )
    .unwrap();
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "error: {}:3: the line is longer than 1 MB: it is not a file of JSON lines; nothing was imported",
            file.display()
        )),
        "{out:?}"
    );
    let users: i64 = env.query("SELECT COUNT(*) FROM users");
    assert_eq!(users, 0, "not the good line before it either");

    let file = env.path("changes.jsonl");
    let long = format!(
        "{{\"entity\": \"produtos\", \"record_id\": \"2\", \"action\": \"upsert\", \"payload\": {{\"nome\": \"{}\"}}}}",
        "P".repeat(2 * 1024 * 1024)
    );
    std::fs::write(
        &file,
        format!(
            "{{\"entity\": \"produtos\", \"record_id\": \"1\", \"action\": \"upsert\", \"payload\": {{\"nome\": \"P1\"}}}}\n{long}"
        ),
    )
    .unwrap();
    for (args, name) in [
        (
            vec!["enqueue", file.to_str().unwrap()],
            file.display().to_string(),
        ),
        (vec!["enqueue", "-"], "stdin".to_string()),
    ] {
        let (out, _) = env.run_measured(&args, Some(&file));
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "error: {name}:2: the line is longer than 1 MB: it is not a file of JSON lines; nothing was enqueued"
            )),
            "{out:?}"
        );
    }
    let queued: i64 = env.query("SELECT COUNT(*) FROM sync_queue");
    assert_eq!(queued, 0);
}

/// Issue 15: `/dev/zero` (an input that never ends, with no line break) given to any import or
/// to `enqueue`, as a file or as stdin, stops after 1 MB with a clear error, and the process
/// stays small (it grew to 24 GB).
#[test]
fn an_endless_input_stops_after_a_megabyte_without_growing_memory() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    let zero = std::path::Path::new("/dev/zero");
    for (args, message) in [
        (
            &["enqueue", "/dev/zero"][..],
            "/dev/zero:1: the line is longer than 1 MB: it is not a file of JSON lines; nothing was enqueued",
        ),
        (
            &["enqueue"][..],
            "stdin:1: the line is longer than 1 MB: it is not a file of JSON lines; nothing was enqueued",
        ),
        (
            &["import", "subscriptions", "/dev/zero"][..],
            "/dev/zero:1: the line is longer than 1 MB: it is not a file of JSON lines; nothing was imported",
        ),
        (
            &["import", "contracts", "/dev/zero"][..],
            "`/dev/zero`: line 1 is longer than 1 MB: it is not a CSV file of rows; nothing was imported",
        ),
        (
            &[
                "credentials",
                "set",
                "--ponto-venda",
                "17308",
                "--usuario",
                "24627",
                "--password-stdin",
            ][..],
            "the password on stdin is longer than 64 kB: send one line, the password; nothing was stored",
        ),
    ] {
        let (out, peak_kb) = env.run_measured(args, Some(zero));
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(message), "{args:?}: {out:?}");
        assert!(
            peak_kb < 64 * 1024,
            "{args:?}: peak memory {peak_kb} kB, expected under 64 MB"
        );
    }
}
