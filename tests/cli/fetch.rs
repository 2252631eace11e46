//! `fetch-invoices` and `retry` against the sandbox's Nio API.

use crm_jobs::sandbox::{Fault, PdfKind, Route, SbDebt, SbInvoice};
use sha2::{Digest, Sha256};

use crate::support::*;

#[test]
fn full_run_records_invoices_pdfs_and_the_run() {
    let env = Env::new();
    let c = env.one_contract(1);
    // Invoice 1 was paid (Nio no longer lists it); 2..5 are open.
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("1000", &[2, 3, 4, 5])]);
    let out = env.run(&["fetch-invoices", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["status"], "success");
    assert_eq!(summary["items"]["ok"], 1);
    assert_eq!(summary["counters"]["matched"], 4);
    assert_eq!(summary["counters"]["no_match"], 1);
    assert_eq!(summary["counters"]["not_available"], 5);
    assert_eq!(summary["counters"]["pdfs_saved"], 4);
    assert!(summary["item_ms"]["max"].as_i64().is_some());
    assert!(
        out.stderr.contains("fetch-invoices run #1: success"),
        "{out:?}"
    );

    let (outcome, amount, pix, barcode, status, path, sha): (String, i64, String, String, String, String, String) = env
        .db()
        .query_row(
            "SELECT match_outcome, amount_centavos, pix_code, barcode, fetch_status, pdf_path, pdf_sha256
             FROM invoices WHERE number = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .unwrap();
    assert_eq!(
        (outcome.as_str(), amount, status.as_str()),
        ("matched", 9_990, "success")
    );
    assert!(pix.ends_with(&format!(
        "{:04X}",
        crm_jobs::domain::pix::crc16(&pix[..pix.len() - 4])
    )));
    assert_eq!(barcode.len(), 47);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert!(
        path.ends_with("faturas/2025-06/C1/fatura-02-2025-07-30.pdf"),
        "{path}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let detail: String = env.query("SELECT match_detail FROM invoices WHERE number = 1");
    assert!(
        detail.contains("no open Nio invoice is due on 30/06/2025"),
        "{detail}"
    );
    let untouched: i64 =
        env.query("SELECT COUNT(*) FROM invoices WHERE number > 5 AND attempts = 0");
    assert_eq!(untouched, 5);

    // Full CPFs never reach the logs.
    assert!(!out.stderr.contains(c.digits()) && !out.stderr.contains(&c.formatted()));
    assert!(out.stderr.contains(&c.masked()), "{out:?}");

    // A second run reuses the bootstrap kept in the store and does not download PDFs again.
    let params = env.sandbox.faults.seen(Route::NioParams);
    let pdfs = env.sandbox.faults.seen(Route::NioPdf);
    let again = env.run(&["fetch-invoices"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioParams), params);
    assert_eq!(env.sandbox.faults.seen(Route::NioPdf), pdfs);
    // The session is kept encrypted, never as sent.
    let session: String = env.query("SELECT session FROM nio_session");
    assert!(!session.starts_with("sid-"));

    let export = env.run(&["export", "invoices", "--format", "csv"]);
    assert_eq!(export.code, 0, "{export:?}");
    let mut lines = export.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("contract,service_order,cpf,customer,safra,number,due_date"),
        "{header}"
    );
    assert!(
        header.ends_with(",last_error,nio_debt_id,nio_invoice_id,expected_amount_centavos,paid_detected_at,pdf_status,pdf_attempts,pdf_failed_attempts,pdf_error"),
        "{header}"
    );
    let second: Vec<&str> = lines.nth(1).unwrap().split(',').collect();
    let column = |name: &str| second[header.split(',').position(|h| h == name).unwrap()];
    assert_eq!(
        (
            column("nio_debt_id"),
            column("nio_invoice_id"),
            column("pdf_status")
        ),
        ("D1000", "100002", "saved")
    );
    assert_eq!(column("pdf_sha256"), sha);
    assert_eq!(column("pdf_path"), path);
    // With no row, the same header.
    let none = env.run(&["export", "invoices", "--safra", "1999-01"]);
    assert_eq!(none.stdout.trim_end(), header);
}

#[test]
fn a_paid_invoice_vanishing_from_nio_is_marked_paid() {
    let env = Env::new();
    let c = env.one_contract(2);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("2000", &[1, 2])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    env.sandbox.nio.pay("200001");
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let (status, outcome): (String, String) = env
        .db()
        .query_row(
            "SELECT payment_status, match_outcome FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), outcome.as_str()), ("paid", "no_match"));
    // Paid invoices are not looked up again.
    env.run(&["fetch-invoices"]);
    let attempts: i64 = env.query("SELECT attempts FROM invoices WHERE number = 1");
    assert_eq!(attempts, 2);
}

#[test]
fn every_match_outcome_is_recorded() {
    let env = Env::new();
    let c = env.one_contract(3);
    let mut d = debt("3000", &[1, 2, 3]);
    // Invoice 1: two open invoices on the same date.
    let mut twin = d.invoices[0].clone();
    twin.id = "3000-twin".into();
    d.invoices.push(twin);
    // Invoice 3 answered with a dashed date.
    d.invoices[2].dashed_date = true;
    env.sandbox.nio.set_customer(c.digits(), vec![d]);
    // The spreadsheet: invoice 2 costs R$ 120,00 (Nio says 99,90); invoice 3 R$ 99,95 (within 5 centavos).
    std::fs::write(
        env.path("faturas.csv"),
        "contrato;numero;vencimento;valor\nC3;2;30/07/2025;R$ 120,00\nC3;3;2025-08-30;\"99,95\"\n",
    )
    .unwrap();
    let imp = env.run(&[
        "import",
        "invoices",
        env.path("faturas.csv").to_str().unwrap(),
    ]);
    assert_eq!(imp.code, 0, "{imp:?}");
    env.db()
        .execute("UPDATE invoices SET due_date = NULL WHERE number = 5", [])
        .unwrap();

    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let outcomes: Vec<(u32, String, Option<i64>)> = {
        let db = env.db();
        let mut stmt = db
            .prepare("SELECT number, match_outcome, amount_centavos FROM invoices WHERE number <= 5 ORDER BY number")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        outcomes,
        vec![
            (1, "ambiguous".into(), None),
            (2, "value_mismatch".into(), None),
            (3, "matched".into(), Some(9_990)),
            (4, "no_match".into(), None),
            (5, "no_due_date".into(), None),
        ]
    );
    assert!(
        out.stderr.contains(
            "invoice 2: value_mismatch: the spreadsheet says R$ 120,00 but Nio says R$ 99,90"
        ),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "invoice 1: ambiguous: 2 open Nio invoices are due on 30/06/2025; nothing applied"
        ),
        "{out:?}"
    );
}

#[test]
fn an_unknown_cpf_is_an_answer_not_an_error() {
    let env = Env::new();
    env.one_contract(4);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let n: i64 = env.query(
        "SELECT COUNT(*) FROM invoices WHERE match_outcome = 'no_match' AND fetch_status = 'success'
           AND match_detail LIKE 'Nio lists no open debt for this CPF%'",
    );
    assert_eq!(n, 5);
}

#[test]
fn an_expired_token_mid_run_bootstraps_once_and_goes_on() {
    let env = Env::with_nio("concurrency = 1");
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in 10..13 {
        let c = cpf(n);
        csv.push_str(&format!("C{n},{},CLIENTE,2025-06-05\n", c.digits()));
        env.sandbox
            .nio
            .set_customer(c.digits(), vec![debt(&format!("{n}00"), &[1])]);
    }
    env.import_contracts(&csv);
    env.sandbox.nio.expire_tokens_after(1);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioParams), 2);
    let matched: i64 = env.query("SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched'");
    assert_eq!(matched, 3);
}

#[test]
fn pages_are_followed_while_full() {
    let env = Env::new();
    let c = env.one_contract(5);
    // 60 debts: the expected invoice 4 sits in the second page.
    let mut debts: Vec<SbDebt> = (0..60)
        .map(|i| SbDebt {
            debt_id: format!("P{i}"),
            invoices: vec![SbInvoice::new(
                &format!("5{i:03}"),
                date("2024-01-10"),
                1_000,
            )],
        })
        .collect();
    debts[55]
        .invoices
        .push(SbInvoice::new("5999", due(4), 9_990));
    env.sandbox.nio.set_customer(c.digits(), debts);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioDebts), 2);
    let id: String = env.query("SELECT nio_invoice_id FROM invoices WHERE number = 4");
    assert_eq!(id, "5999");
}

/// Issue 12: pages count invoices summed over debts. A customer with 56 open invoices in 3
/// debts was asked only `offset=0` (the client counted 3 debts, fewer than the limit), and the
/// contract's invoices in the other 6 came out `no_match`.
#[test]
fn every_invoice_is_read_when_few_debts_hold_many_invoices() {
    let env = Env::new();
    let c = env.one_contract(25);
    // 51 older open invoices of another product, then the contract's 1..5: invoices 1 and 2 sit
    // in the first page, 3..5 in the second (offset 50), in the third debt.
    let mut all: Vec<SbInvoice> = (0..51)
        .map(|k| {
            SbInvoice::new(
                &format!("25{k:03}"),
                date("2019-01-10") + chrono::Months::new(k),
                5_990,
            )
        })
        .collect();
    all.insert(48, SbInvoice::new("2599901", due(1), 9_990));
    all.insert(49, SbInvoice::new("2599902", due(2), 9_990));
    for n in 3..=5 {
        all.push(SbInvoice::new(&format!("25999{n:02}"), due(n), 9_990));
    }
    assert_eq!(all.len(), 56);
    let debts = SbDebt::spread("D25", all, 3);
    env.sandbox.nio.set_customer(c.digits(), debts);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        env.sandbox.faults.seen(Route::NioDebts),
        2,
        "offset 0 and 50"
    );
    let matched: Vec<(u32, String, String)> = {
        let db = env.db();
        let mut stmt = db
            .prepare(
                "SELECT number, nio_invoice_id, nio_debt_id FROM invoices
                 WHERE match_outcome = 'matched' ORDER BY number",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        matched,
        (1..=5)
            .map(|n| (n, format!("25999{n:02}"), "D25-3".to_string()))
            .collect::<Vec<_>>()
    );
}

/// A customer with exactly `limit` open invoices: the next offset is asked and answers none.
#[test]
fn a_full_last_page_asks_once_more_and_stops() {
    let env = Env::with_nio("page_size = 5");
    let c = env.one_contract(26);
    env.sandbox.nio.set_customer(
        c.digits(),
        SbDebt::spread("D26", debt("26", &[1, 2, 3, 4, 5]).invoices, 2),
    );
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioDebts), 2);
    let matched: i64 = env.query("SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched'");
    assert_eq!(matched, 5);
}

#[test]
fn too_many_requests_waits_as_told() {
    let env = Env::with_nio("request_retries = 1");
    let c = env.one_contract(6);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("6000", &[1])]);
    env.sandbox.faults.push(
        Route::NioDebts,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    let started = std::time::Instant::now();
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(env.sandbox.faults.seen(Route::NioDebts), 2);
}

#[test]
fn a_server_error_fails_the_item_and_retry_recovers_it() {
    let env = Env::new();
    let c = env.one_contract(7);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("7000", &[1])]);
    env.sandbox.faults.push(
        Route::NioDebts,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        1,
    );
    let out = env.run(&["fetch-invoices", "--no-retry"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("transient error: the Nio API answered 503 Service Unavailable"),
        "{out:?}"
    );
    let (status, kind, failed): (String, String, i64) = env
        .db()
        .query_row(
            "SELECT fetch_status, error_kind, failed_attempts FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), kind.as_str(), failed),
        ("error", "transient", 1)
    );

    let retry = env.run(&["retry"]);
    assert_eq!(retry.code, 0, "{retry:?}");
    let (status, origin, outcome): (String, String, String) = env
        .db()
        .query_row(
            "SELECT fetch_status, fetch_origin, match_outcome FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), origin.as_str(), outcome.as_str()),
        ("success", "retry", "matched")
    );
}

#[test]
fn the_final_pass_retries_this_runs_transient_failures() {
    let env = Env::new();
    let c = env.one_contract(8);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("8000", &[1])]);
    env.sandbox.faults.push(Route::NioDebts, Fault::Reset, 1);
    let out = env.run(&["fetch-invoices", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["recovered"], 1, "{out:?}");
    assert_eq!(summary["items"]["failed"], 0);
}

#[test]
fn the_captcha_wall_stops_the_run_with_one_message() {
    let env = Env::new();
    for n in 20..23 {
        env.one_contract(n);
    }
    env.sandbox.nio.set_captcha(true);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.matches("captcha wall").count(),
        1,
        "one message, not one per contract: {out:?}"
    );
    assert!(
        out.stderr
            .contains("error: the Nio site answered 403 Forbidden to"),
        "{out:?}"
    );
    assert_eq!(env.sandbox.faults.seen(Route::NioParams), 1);
    let touched: i64 = env.query("SELECT COUNT(*) FROM invoices WHERE attempts > 0");
    assert_eq!(touched, 0);
    let (status, error): (String, String) = env
        .db()
        .query_row("SELECT status, error FROM runs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("captcha"));
}

#[test]
fn a_wrong_passphrase_says_what_to_change() {
    let env = Env::new();
    env.one_contract(24);
    let out = env
        .cmd(&["fetch-invoices"])
        .env("CRM_JOBS_NIO_PASSPHRASE", "old")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("update `CRM_JOBS_NIO_PASSPHRASE`"),
        "{stderr}"
    );
}

#[test]
fn a_body_that_is_not_a_pdf_is_never_saved() {
    let env = Env::new();
    let c = env.one_contract(9);
    let mut d = debt("9000", &[1, 2]);
    d.invoices[0].pdf = PdfKind::NotPdf;
    d.invoices[1].pdf = PdfKind::JsonLink;
    env.sandbox.nio.set_customer(c.digits(), vec![d]);
    let out = env.run(&["fetch-invoices", "--no-retry"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "invoice 1: PDF not saved (permanent): the PDF of invoice `900001` is not a PDF (42 bytes starting with `<html><body>Sess"
        ),
        "{out:?}"
    );
    let (status, error, path): (String, String, Option<String>) = env
        .db()
        .query_row(
            "SELECT pdf_status, pdf_error, pdf_path FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(status, "error");
    assert!(
        error.starts_with("the PDF of invoice `900001` is not a PDF"),
        "{error}"
    );
    assert_eq!(path, None);
    let files = files_under(&env.downloads());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(std::fs::read(&files[0]).unwrap().starts_with(b"%PDF-"));
}

/// Issue 12: a PDF that could not be saved made its invoice `gave_up` after 3 runs, and after
/// that the invoice's payment was never seen (paid at Nio, `open` in the export); a body that is
/// not a PDF was asked 9 times over two runs.
#[test]
fn the_payment_is_tracked_whatever_the_pdf_does() {
    let env = Env::with_nio("request_retries = 2");
    let c = env.one_contract(27);
    let mut d = debt("2700", &[1, 2]);
    d.invoices[0].pdf = PdfKind::NotPdf;
    env.sandbox.nio.set_customer(c.digits(), vec![d]);
    let pdf_row = || -> (String, String, Option<String>, i64, i64) {
        env.db()
            .query_row(
                "SELECT fetch_status, payment_status, pdf_status, pdf_attempts, attempts
                 FROM invoices WHERE number = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
    };

    // One try per run: no in-request retries, no final pass, nothing for `retry`.
    let first = env.run(&["fetch-invoices"]);
    assert_eq!(first.code, 1, "{first:?}");
    assert_eq!(
        env.sandbox.faults.seen(Route::NioPdf),
        2,
        "invoices 1 and 2"
    );
    assert_eq!(
        pdf_row(),
        ("success".into(), "open".into(), Some("error".into()), 1, 1)
    );
    let retry = env.run(&["retry"]);
    assert!(retry.stderr.contains("nothing to retry"), "{retry:?}");
    assert_eq!(env.run(&["fetch-invoices"]).code, 1);
    assert_eq!(env.sandbox.faults.seen(Route::NioPdf), 3);
    let third = env.run(&["fetch-invoices"]);
    assert_eq!(third.code, 1, "{third:?}");
    assert!(
        third
            .stderr
            .contains("(PDF gave up: attempt limit reached; the invoice is still tracked)"),
        "{third:?}"
    );
    assert!(third.stderr.contains("1 PDF(s) gave up"), "{third:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioPdf), 4);
    assert_eq!(
        pdf_row(),
        (
            "success".into(),
            "open".into(),
            Some("gave_up".into()),
            3,
            3
        )
    );

    let report = env.run(&["report"]);
    assert!(
        report.stdout.contains(
            "<tr><td>C27</td><td>1</td><td>pdf gave_up</td><td>3</td><td>the PDF of invoice `270001` is not a PDF"
        ),
        "{}",
        report.stdout
    );

    // The PDF is not asked again; the invoice still is, and its payment is seen.
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    assert_eq!(env.sandbox.faults.seen(Route::NioPdf), 4);
    env.sandbox.nio.pay("270001");
    let paid = env.run(&["fetch-invoices", "--json"]);
    assert_eq!(paid.code, 0, "{paid:?}");
    assert!(
        paid.stderr.contains("fetch-invoices run #6: success in "),
        "{paid:?}"
    );
    assert!(paid.stderr.contains("; 1 newly paid;"), "{paid:?}");
    let summary: serde_json::Value = serde_json::from_str(&paid.stdout).unwrap();
    assert_eq!(summary["counters"]["paid"], 1);
    assert_eq!(
        pdf_row(),
        (
            "success".into(),
            "paid".into(),
            Some("gave_up".into()),
            3,
            5
        )
    );
    let detail: String = env.query("SELECT match_detail FROM invoices WHERE number = 1");
    assert_eq!(
        detail,
        "paid: Nio listed it open as invoice `270001` before, and no open invoice is due on 30/06/2025 now"
    );
    // A later run that looks nothing up does not hide what the last lookup found.
    assert!(env.run(&["retry"]).stderr.contains("nothing to retry"));
    let status = env.run(&["status"]);
    assert!(
        status.stdout.contains(
            "payments:  1 open, 1 paid, 8 unknown (1 newly paid by fetch-invoices run #6)"
        ),
        "{status:?}"
    );
    assert!(
        status.stdout.contains("pdfs:      1 gave_up, 1 saved"),
        "{status:?}"
    );
    let export = env.run(&["export", "invoices", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&export.stdout).unwrap();
    assert_eq!(rows[0]["payment_status"], "paid");
    assert_eq!(rows[0]["pdf_status"], "gave_up");
    assert_eq!(rows[0]["fetch_status"], "success");
    assert_eq!(rows[0]["nio_invoice_id"], "270001");
    assert_eq!(rows[0]["nio_debt_id"], "D2700");
    assert!(rows[0]["paid_detected_at"].is_string());

    // `retry --reset` gives the PDF another chance.
    let reset = env.run(&["retry", "--reset", "C27"]);
    assert!(
        reset.stderr.contains("1 given-up invoice(s) reset"),
        "{reset:?}"
    );
    let pdf: String = env.query("SELECT pdf_status FROM invoices WHERE number = 1");
    assert_eq!(pdf, "error");
}

/// A PDF endpoint that fails transiently is retried in place, by the final pass and by `retry`,
/// without a new failed attempt of the invoice.
#[test]
fn a_transient_pdf_failure_is_retried_alone() {
    let env = Env::new();
    let c = env.one_contract(28);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("2800", &[1])]);
    env.sandbox.faults.push(
        Route::NioPdf,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        2,
    );
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "invoice 1: PDF not saved (transient): the Nio PDF endpoint answered 503 Service Unavailable"
        ),
        "{out:?}"
    );
    assert_eq!(
        env.sandbox.faults.seen(Route::NioPdf),
        2,
        "first pass and final pass"
    );
    let (fetch, failed, pdf, kind): (String, i64, String, String) = env
        .db()
        .query_row(
            "SELECT fetch_status, failed_attempts, pdf_status, pdf_error_kind FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (fetch.as_str(), failed, pdf.as_str(), kind.as_str()),
        ("success", 0, "error", "transient")
    );
    let retry = env.run(&["retry"]);
    assert_eq!(retry.code, 0, "{retry:?}");
    let (pdf, failed, attempts, path): (String, i64, i64, String) = env
        .db()
        .query_row(
            "SELECT pdf_status, pdf_failed_attempts, pdf_attempts, pdf_path FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((pdf.as_str(), failed, attempts), ("saved", 0, 3));
    assert!(std::fs::read(path).unwrap().starts_with(b"%PDF-"));
}

#[test]
fn retry_gives_up_at_the_limit_and_reset_brings_it_back() {
    let env = Env::new();
    let c = env.one_contract(11);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("1100", &[1])]);
    env.sandbox.faults.push(
        Route::NioDebts,
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        3,
    );
    assert_eq!(env.run(&["fetch-invoices", "--no-retry"]).code, 1);
    assert_eq!(env.run(&["retry"]).code, 1);
    let last = env.run(&["retry"]);
    assert_eq!(last.code, 1, "{last:?}");
    assert!(
        last.stderr.contains("(gave up: attempt limit reached)"),
        "{last:?}"
    );
    let status: String = env.query("SELECT fetch_status FROM invoices WHERE number = 1");
    assert_eq!(status, "gave_up");

    let idle = env.run(&["retry"]);
    assert_eq!(idle.code, 0, "{idle:?}");
    assert!(idle.stderr.contains("nothing to retry"), "{idle:?}");
    env.run(&["fetch-invoices"]);
    let attempts: i64 = env.query("SELECT attempts FROM invoices WHERE number = 1");
    assert_eq!(attempts, 3, "a given-up invoice is not fetched");

    let reset = env.run(&["retry", "--reset", "C11"]);
    assert_eq!(reset.code, 0, "{reset:?}");
    assert!(
        reset.stderr.contains("5 given-up invoice(s) reset"),
        "{reset:?}"
    );
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let status: String = env.query("SELECT fetch_status FROM invoices WHERE number = 1");
    assert_eq!(status, "success");
}

#[test]
fn a_contract_with_an_invalid_cpf_is_skipped_with_the_reason() {
    let env = Env::new();
    env.one_contract(12);
    env.db()
        .execute("UPDATE contracts SET cpf = '12345678900'", [])
        .unwrap();
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("skipped: invalid CPF: CPF check digits do not match (a typo?)"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("12345678900"));
    assert_eq!(env.sandbox.faults.seen(Route::NioDebts), 0);
}

#[test]
fn dry_run_lists_and_touches_nothing() {
    let env = Env::new();
    env.one_contract(13);
    let out = env.run(&["fetch-invoices", "--dry-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("C13\t"), "{out:?}");
    assert!(
        out.stdout
            .contains("invoices 1,2,3,4,5\t(5 not available yet)")
    );
    assert_eq!(env.sandbox.faults.seen(Route::NioParams), 0);
    let runs: i64 = env.query("SELECT COUNT(*) FROM runs");
    assert_eq!(runs, 0);
}

#[test]
fn contracts_are_taken_least_recently_fetched_first() {
    let env = Env::new();
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in 30..33 {
        csv.push_str(&format!("C{n},{},CLIENTE,2025-06-05\n", cpf(n).digits()));
    }
    env.import_contracts(&csv);
    assert_eq!(env.run(&["fetch-invoices", "--limit", "2"]).code, 0);
    assert_eq!(env.run(&["fetch-invoices", "--limit", "2"]).code, 0);
    // C32 was left out by the first run, so the second run took it, with one of the others.
    let second: String = env.query(
        "SELECT group_concat(DISTINCT c.contract_number) FROM invoices i JOIN contracts c ON c.id = i.contract_id
         WHERE i.last_run_id = 2 ORDER BY 1",
    );
    assert!(
        second.contains("C32") && second.split(',').count() == 2,
        "{second}"
    );
}

#[test]
fn a_timeout_is_transient() {
    let env = Env::with_nio("timeout_secs = 1");
    let c = env.one_contract(14);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("1400", &[1])]);
    // The first bootstrap is quick; then every request is slower than the timeout.
    env.sandbox.faults.hold(Route::NioDebts);
    let out = env.run(&["fetch-invoices", "--no-retry"]);
    env.sandbox.faults.release_all();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("transient error: request to the Nio API timed out"),
        "{out:?}"
    );
    let kind: String = env.query("SELECT error_kind FROM invoices WHERE number = 1");
    assert_eq!(kind, "transient");
}

#[test]
fn export_as_json_carries_the_tracking_fields() {
    let env = Env::new();
    let c = env.one_contract(15);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("1500", &[1])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let out = env.run(&[
        "export",
        "invoices",
        "--format",
        "json",
        "--contract",
        "C15",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.len(), 10);
    let first = &rows[0];
    assert_eq!(first["number"], 1);
    assert_eq!(first["amount_centavos"], 9_990);
    assert_eq!(first["payment_status"], "open");
    assert_eq!(first["match_outcome"], "matched");
    assert_eq!(first["fetch_status"], "success");
    assert_eq!(first["attempts"], 1);
    assert!(first["pdf_path"].as_str().unwrap().ends_with(".pdf"));
    assert_eq!(first["cpf"], c.digits());
}

#[test]
fn a_changed_api_stops_the_run_with_one_message() {
    let env = Env::with_nio("concurrency = 1");
    for n in 16..19 {
        env.one_contract(n);
    }
    env.sandbox.faults.push(
        Route::NioDebts,
        Fault::Status {
            status: 404,
            retry_after: None,
        },
        1,
    );
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.matches("the API changed").count(), 1, "{out:?}");
    assert!(out.stderr.contains("check `[nio] debts_path`"), "{out:?}");
    assert_eq!(
        env.sandbox.faults.seen(Route::NioDebts),
        1,
        "no contract after the first"
    );
    let touched: i64 = env.query("SELECT COUNT(*) FROM invoices WHERE attempts > 0");
    assert_eq!(touched, 0);
}

#[test]
fn a_differently_dressed_api_is_reached_by_configuration_alone() {
    let env = Env::with_nio(
        "debts_path = \"/v2/clientes/{cpf}/debitos\"\n\
         [nio.fields]\ndebts = \"dividas\"\ninvoices = \"faturas\"\ndue_date = \"vencimento\"\namount = \"valor\"\npix_code = [\"pix\"]",
    );
    env.sandbox.nio.rename_fields(&[
        ("debts", "dividas"),
        ("invoices", "faturas"),
        ("dueDate", "vencimento"),
        ("amount", "valor"),
        ("originalPixCode", "pix"),
    ]);
    let c = env.one_contract(19);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("1900", &[1, 2])]);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let n: i64 = env.query("SELECT COUNT(*) FROM invoices WHERE match_outcome = 'matched' AND amount_centavos = 9990 AND pix_code IS NOT NULL");
    assert_eq!(n, 2);
}

/// Issue 12: only a large `--limit` took every due contract.
#[test]
fn all_takes_every_due_contract() {
    let env = Env::new();
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in 40..65 {
        csv.push_str(&format!("C{n},{},CLIENTE,2025-06-05\n", cpf(n).digits()));
    }
    env.import_contracts(&csv);
    let both = env.run(&["fetch-invoices", "--all", "--limit", "5"]);
    assert_eq!(both.code, 2, "{both:?}");
    assert!(
        both.stderr
            .contains("the argument '--all' cannot be used with '--limit <N>'"),
        "{both:?}"
    );
    let out = env.run(&["fetch-invoices", "--all"]);
    assert_eq!(out.code, 0, "{out:?}");
    let taken: String = env.query(
        "SELECT group_concat(contract_number, ',') FROM
           (SELECT contract_number FROM contracts WHERE last_fetch_at IS NOT NULL ORDER BY id)",
    );
    let all: Vec<String> = (40..65).map(|n| format!("C{n}")).collect();
    assert_eq!(taken, all.join(","), "more than the default limit of 20");
}

/// Issue 12: a contract number of 300 characters made a folder name the file system refused.
#[test]
fn a_very_long_contract_number_gets_a_short_folder_of_its_own() {
    let env = Env::new();
    let long_a = format!("{}A", "7".repeat(299));
    let long_b = format!("{}B", "7".repeat(299));
    env.import_contracts(&format!(
        "contrato,cpf,nome,data_instalacao\n{long_a},{},ANA,2025-06-05\n{long_b},{},BIA,2025-06-05\n",
        cpf(66).digits(),
        cpf(67).digits()
    ));
    env.sandbox
        .nio
        .set_customer(cpf(66).digits(), vec![debt("6600", &[1])]);
    env.sandbox
        .nio
        .set_customer(cpf(67).digits(), vec![debt("6700", &[1])]);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    let paths: Vec<std::path::PathBuf> = ["6600", "6700"]
        .iter()
        .map(|id| {
            let p: String = env.query(&format!(
                "SELECT pdf_path FROM invoices WHERE nio_invoice_id = '{id}01'"
            ));
            std::path::PathBuf::from(p)
        })
        .collect();
    let folders: Vec<String> = paths
        .iter()
        .map(|p| {
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_ne!(folders[0], folders[1], "two contracts, two folders");
    for (folder, path) in folders.iter().zip(&paths) {
        assert_eq!(folder.len(), 120, "{folder}");
        assert!(folder.starts_with(&"7".repeat(107)), "{folder}");
        assert!(std::fs::read(path).unwrap().starts_with(b"%PDF-"));
    }
}

/// Issue 12: an error the file system gives for a name is permanent, not transient.
#[test]
fn a_name_the_file_system_refuses_is_a_permanent_pdf_failure() {
    let env = Env::new();
    let c = env.one_contract(68);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("6800", &[1])]);
    set_key(
        &env,
        "downloads",
        "dir",
        &format!("\"downloads/{}\"", "d".repeat(300)),
    );
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("invoice 1: PDF not saved (permanent): cannot create folder `"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("`: File name too long (os error 36)"),
        "{out:?}"
    );
    assert_eq!(
        env.sandbox.faults.seen(Route::NioPdf),
        1,
        "no final pass for a permanent failure"
    );
    let (fetch, pdf, kind): (String, String, String) = env
        .db()
        .query_row(
            "SELECT fetch_status, pdf_status, pdf_error_kind FROM invoices WHERE number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (fetch.as_str(), pdf.as_str(), kind.as_str()),
        ("success", "error", "permanent")
    );
}

/// Runs `args` with a reader that takes the first line of stdout, then goes away (`| head -1`).
fn read_one_line_and_close(env: &Env, args: &[&str]) -> (String, Out) {
    use std::io::BufRead;
    let mut child = env.spawn(args);
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        first,
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    )
}

/// Issue 12: `crm-jobs export invoices --format json | head` ended with `error: Broken pipe (os
/// error 32)` and exit 1; a reader that goes away now ends every command quietly.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let env = Env::new();
    let mut csv = String::from("contrato,cpf,nome,data_instalacao\n");
    for n in 100..400 {
        csv.push_str(&format!(
            "C{n},{},CLIENTE {n},2025-06-05\n",
            cpf(n).digits()
        ));
    }
    env.import_contracts(&csv);
    // 3000 invoices: far more than a pipe holds, so the reader is gone while it writes.
    for args in [
        &["export", "invoices", "--format", "json"][..],
        &["export", "invoices"],
        &["fetch-invoices", "--dry-run", "--all"],
    ] {
        let (first, out) = read_one_line_and_close(&env, args);
        assert!(!first.is_empty(), "{args:?}");
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(!out.stderr.contains("Broken pipe"), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("error"), "{args:?}: {out:?}");
    }
    // A reader gone before anything was written.
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["config", "check"],
        &["schedule", "crontab"],
    ] {
        let mut child = env.spawn(args);
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

/// A stdout that fails otherwise (a full disk) is one clear error, not a panic.
#[test]
fn a_stdout_that_cannot_be_written_is_one_clear_error() {
    let env = Env::new();
    env.one_contract(69);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = env
        .cmd(&["export", "invoices"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot write the results to stdout: No space left on device (os error 28)\n"
    );
}

/// An API that answers the same full page whatever the offset would be asked forever: the run
/// stops with one message instead.
#[test]
fn an_api_that_does_not_page_stops_the_run() {
    let env = Env::new();
    let c = env.one_contract(70);
    let many: Vec<SbInvoice> = (0..60u32)
        .map(|k| {
            SbInvoice::new(
                &format!("70{k:03}"),
                date("2019-01-10") + chrono::Months::new(k),
                5_990,
            )
        })
        .collect();
    env.sandbox
        .nio
        .set_customer(c.digits(), SbDebt::spread("D70", many, 2));
    env.sandbox.nio.ignore_offset(true);
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "error: the Nio API answered the same 50 invoices at `offset=50` as before to `"
        ),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("it does not page as expected; check `[nio] page_size`"),
        "{out:?}"
    );
    assert!(!out.stderr.contains(c.digits()), "no full CPF: {out:?}");
    assert_eq!(env.sandbox.faults.seen(Route::NioDebts), 2);
}
