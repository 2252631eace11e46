//! Issue 15: commands that only read serve a store this user cannot write, and exports stream
//! (the same bytes as before, whatever the row count, chunk after chunk).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::support::*;

/// `count` contracts installed on 2025-06-05 (ten expected invoices each); every other one has
/// a customer name a spreadsheet would run as a formula.
fn contracts(env: &Env, count: u32) {
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in 100..100 + count {
        let name = if n.is_multiple_of(2) {
            format!("\"=HYPERLINK(\"\"x\"\";{n})\"")
        } else {
            format!("CLIENTE {n}")
        };
        csv.push_str(&format!("C{n},{},{name},2025-06-05\n", cpf(n).digits()));
    }
    env.import_contracts(&csv);
}

#[test]
fn an_export_streams_chunk_after_chunk_with_every_cell_neutralized_and_the_header_once() {
    let env = Env::new();
    contracts(&env, 300);
    let rows: i64 = env.query("SELECT COUNT(*) FROM invoices");
    assert_eq!(rows, 3000, "more rows than one chunk of 1024");

    let out = env.run(&["export", "invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
    assert_eq!(&reader.headers().unwrap()[0], "contract");
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3000, "every row once, the header once");
    for r in &records {
        let n: u32 = r[0][1..].parse().unwrap();
        let expected = if n.is_multiple_of(2) {
            format!("'=HYPERLINK(\"x\";{n})")
        } else {
            format!("CLIENTE {n}")
        };
        assert_eq!(r[3], expected, "row of contract {n}");
    }

    // --raw-cells and --out: the same rows, the names as they are, the file written whole.
    let file = env.path("out/invoices.csv");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let out = env.run(&[
        "export",
        "invoices",
        "--raw-cells",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("exported 3000 invoice(s)"), "{out:?}");
    let raw = std::fs::read_to_string(&file).unwrap();
    let mut reader = csv::Reader::from_reader(raw.as_bytes());
    let names: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[3].to_string())
        .collect();
    assert_eq!(names.len(), 3000);
    assert!(names.contains(&"=HYPERLINK(\"x\";100)".to_string()));

    // JSON: one array of every row, the same rows.
    let out = env.run(&["export", "invoices", "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v.len(), 3000);
    assert_eq!(v[0]["customer"], "=HYPERLINK(\"x\";100)");
    assert_eq!(v[2999]["contract"], "C399");
    assert!(out.stdout.ends_with("}\n]\n"), "pretty, as before");

    // Nothing to export: the header alone, and an empty array.
    let out = env.run(&["export", "queue"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("id,entity,record_id"), "{out:?}");
    let out = env.run(&["export", "queue", "--format", "json"]);
    assert_eq!(out.stdout, "[]\n");
}

/// Makes the store readable, not writable, by the user the commands then run as: as root (CI),
/// the commands run as `nobody` with the store owned by root and readable by all; otherwise the
/// store and its folder lose their write bits. Returns a guard that gives them back.
struct ReadOnly<'a> {
    env: &'a Env,
    as_root: bool,
}

impl<'a> ReadOnly<'a> {
    fn arrange(env: &'a Env) -> ReadOnly<'a> {
        let as_root = is_root();
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let store = env.path("store/crm.db");
        for side in ["-wal", "-shm"] {
            assert!(
                !env.path(&format!("store/crm.db{side}")).exists(),
                "a store closed cleanly has no {side}"
            );
        }
        if as_root {
            set(env.dir.path(), 0o755);
            set(&env.path("store"), 0o755);
            set(&store, 0o644);
            set(&env.path("config.toml"), 0o644);
        } else {
            set(&store, 0o444);
            set(&env.path("store"), 0o555);
        }
        ReadOnly { env, as_root }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = self.env.cmd(args);
        if self.as_root {
            cmd.uid(65534).gid(65534);
        }
        let o = cmd.output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).ok();
        };
        set(&self.env.path("store"), 0o700);
        set(&self.env.path("store/crm.db"), 0o600);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

#[test]
fn a_store_this_user_can_only_read_still_serves_status_exports_report_and_dry_runs() {
    let env = Env::new();
    contracts(&env, 3);
    let enqueue = env.path("changes.jsonl");
    std::fs::write(
        &enqueue,
        "{\"entity\":\"clientes\",\"record_id\":\"7\",\"action\":\"create\",\"payload\":{\"nome\":\"ANA\"}}\n",
    )
    .unwrap();
    let out = env.run(&["enqueue", enqueue.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let before = std::fs::read(env.path("store/crm.db")).unwrap();

    let reader = ReadOnly::arrange(&env);
    let out = reader.run(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("fetch-invoices"), "{out:?}");
    let out = reader.run(&["export", "invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 31, "{out:?}");
    assert!(out.stdout.contains("CLIENTE 101"), "{out:?}");
    let out = reader.run(&["export", "queue", "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"entity\": \"clientes\""), "{out:?}");
    let out = reader.run(&["report"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("<html"), "{}", out.stderr);
    for args in [
        &["fetch-invoices", "--dry-run", "--all"][..],
        &["sync-queue", "--dry-run"],
        &["renew", "--dry-run"],
        &["cleanup", "--dry-run"],
        &["download-boletos", "--dry-run"],
    ] {
        let out = reader.run(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(!out.stderr.contains("WAL"), "{args:?}: {out:?}");
    }
    let out = reader.run(&["fetch-invoices", "--dry-run", "--all"]);
    assert!(out.stdout.contains("C101"), "{out:?}");
    let out = reader.run(&["sync-queue", "--dry-run"]);
    assert!(out.stdout.contains("clientes\t7\tcreate"), "{out:?}");

    // A job that writes says what is wrong and what to do, and changes nothing.
    let out = reader.run(&["cleanup"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("run the job as the store's owner"),
        "{out:?}"
    );
    drop(reader);
    assert_eq!(
        std::fs::read(env.path("store/crm.db")).unwrap(),
        before,
        "the store is as it was"
    );
}
