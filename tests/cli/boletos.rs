//! `credentials`, `import clients` and `download-boletos` against the sandbox's Canopus portal.

use std::io::Write;
use std::process::Stdio;

use crm_jobs::sandbox::{Route, SbBoleto, SbQuota};
use rust_xlsxwriter::Workbook;

use crate::support::*;

/// A consultant spreadsheet like the real one: a title block, the header on row 12, CPFs stored
/// as numbers (leading zero lost), names with commission notes.
fn spreadsheet(env: &Env, file: &str, rows: &[(&str, &str, &str, &str)]) -> std::path::PathBuf {
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet
        .write_string(0, 0, "PLANILHA GERAL - CONSÓRCIO CANOPUS")
        .unwrap();
    sheet.write_string(2, 0, "Consultor: DENER").unwrap();
    sheet
        .write_string(4, 0, "Atualizado em 01/11/2025")
        .unwrap();
    let header = ["G/C", "CPF", "Concorciado", "SITUAÇÃO", "P.V", "Valor"];
    for (i, h) in header.iter().enumerate() {
        sheet.write_string(11, i as u16, *h).unwrap();
    }
    for (n, (gc, cpf, name, situacao)) in rows.iter().enumerate() {
        let r = 12 + n as u32;
        sheet.write_string(r, 0, *gc).unwrap();
        match cpf.parse::<f64>() {
            Ok(number) => sheet.write_number(r, 1, number).unwrap(),
            Err(_) => sheet.write_string(r, 1, *cpf).unwrap(),
        };
        sheet.write_string(r, 2, *name).unwrap();
        sheet.write_string(r, 3, *situacao).unwrap();
        sheet.write_number(r, 4, 17308.0).unwrap();
        sheet.write_number(r, 5, 512.34).unwrap();
    }
    let path = env.path(file);
    book.save(&path).unwrap();
    path
}

fn set_credentials(env: &Env, password: &str) -> Out {
    let mut child = env
        .cmd(&[
            "credentials",
            "set",
            "--ponto-venda",
            "17308",
            "--usuario",
            "24627",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub(crate) fn quota(group: &str, name: &str, dues: &[&str]) -> SbQuota {
    SbQuota {
        group: group.into(),
        quota: "0123".into(),
        name: name.into(),
        boletos: dues
            .iter()
            .enumerate()
            .map(|(i, d)| SbBoleto::new(date(d), 51_234, 7_000 + i as u64))
            .collect(),
    }
}

/// A portal user, credentials stored, and clients imported from a spreadsheet.
pub(crate) fn setup(env: &Env, rows: &[(&str, &str, &str, &str)]) {
    env.sandbox.canopus.add_user("24627", "s3nha");
    let out = set_credentials(env, "s3nha");
    assert_eq!(out.code, 0, "{out:?}");
    let file = spreadsheet(env, "DENER__PLANILHA_GERAL.xlsx", rows);
    let out = env.run(&[
        "import",
        "clients",
        file.to_str().unwrap(),
        "--consultor",
        "Dener",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// `setup` with these clients (`(n, NAME)`: CPF `digits(n)`), each with one quota and this
/// month's boleto at the portal.
pub(crate) fn clients_with_a_boleto(env: &Env, clients: &[(u32, &str)]) {
    let rows: Vec<(String, String)> = clients
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (format!("{}/1", i + 1), digits(*n)))
        .collect();
    let table: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .zip(clients)
        .map(|((q, d), (_, name))| (q.as_str(), d.as_str(), *name, "Em dia"))
        .collect();
    setup(env, &table);
    for (n, name) in clients {
        env.sandbox.canopus.set_client(
            &digits(*n),
            vec![quota(&n.to_string(), name, &["2025-11-10"])],
        );
    }
}

pub(crate) fn digits(n: u32) -> String {
    cpf(n).digits().to_string()
}

#[test]
fn every_outcome_with_files_named_per_consultant() {
    let env = Env::new();
    // cpf(2) starts with 0? Numbers lose leading zeros either way: stored as numbers.
    setup(
        &env,
        &[
            (
                "001234/0123",
                &digits(1),
                "WESLEY JUNIOR DIDEROT CHERISCAR - 70%",
                "Em dia",
            ),
            ("001235/0123", &digits(2), "MARIA SEM COTA", "INADIMPLENTE"),
            ("001236/0123", &digits(3), "JOÃO SEM BOLETO 50%", "Em dia"),
            ("001237/0123", &digits(4), "ANA DUAS COTAS", "Em dia"),
            ("001238/0123", &digits(5), "CARLOS PDF QUEBRADO", "Em dia"),
            ("001239/0123", &digits(6), "CANCELADO HÁ TEMPO", "CANCELADO"),
        ],
    );
    let c = &env.sandbox.canopus;
    c.set_client(
        &digits(1),
        vec![quota(
            "001234",
            "WESLEY JUNIOR DIDEROT CHERISCAR",
            &["2025-10-10", "2025-11-10"],
        )],
    );
    c.set_client(&digits(3), vec![quota("001236", "JOÃO SEM BOLETO", &[])]);
    c.set_client(
        &digits(4),
        vec![
            quota("001237", "ANA DUAS COTAS", &["2025-11-15"]),
            quota("001240", "ANA DUAS COTAS", &["2025-11-20"]),
        ],
    );
    let mut broken = quota("001238", "CARLOS PDF QUEBRADO", &["2025-11-05"]);
    broken.boletos[0].broken_pdf = true;
    c.set_client(&digits(5), vec![broken]);

    let out = env.run(&[
        "download-boletos",
        "--ponto-venda",
        "17.308",
        "--ano",
        "2025",
        "--mes",
        "11",
        "--json",
    ]);
    assert_eq!(out.code, 3, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["success"], 2, "{out:?}");
    assert_eq!(summary["counters"]["cpf_not_found"], 1);
    assert_eq!(summary["counters"]["no_boleto"], 1);
    assert_eq!(summary["counters"]["error"], 1);
    assert_eq!(summary["counters"]["files"], 3);
    assert_eq!(
        summary["items"]["total"], 5,
        "the cancelled client is not taken"
    );

    let folder = env.downloads().join("DENER");
    let wesley = folder.join("WESLEY_JUNIOR_DIDEROT_CHERISCAR_NOVEMBRO.pdf");
    let bytes = std::fs::read(&wesley).unwrap();
    assert!(
        bytes.starts_with(b"%PDF-") && bytes.len() > 150_000,
        "{}",
        bytes.len()
    );
    assert!(
        folder
            .join("ANA_DUAS_COTAS_NOVEMBRO_001237-0123.pdf")
            .exists()
    );
    assert!(
        folder
            .join("ANA_DUAS_COTAS_NOVEMBRO_001240-0123.pdf")
            .exists()
    );
    assert_eq!(
        files_under(&env.downloads()).len(),
        3,
        "{:?}",
        files_under(&env.downloads())
    );
    assert!(
        out.stderr.contains("CARLOS PDF QUEBRADO (DENER, "),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "is not a PDF (48 bytes starting with `<html><body>Erro ao `); nothing was saved"
        ),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains(&cpf(1).formatted()),
        "no full CPF in logs"
    );

    let (due, value, linha): (String, i64, String) = env
        .db()
        .query_row(
            "SELECT b.due_date, b.value_centavos, b.linha FROM boletos b JOIN clients c ON c.id = b.client_id
             WHERE c.cpf = ?1",
            [digits(1)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((due.as_str(), value), ("2025-11-10", 51_234));
    assert!(crm_jobs::domain::boleto::validate_linha(&linha).is_ok());

    let export = env.run(&[
        "export", "boletos", "--format", "csv", "--ano", "2025", "--mes", "11",
    ]);
    assert_eq!(export.code, 0, "{export:?}");
    assert!(
        export
            .stdout
            .starts_with("sales_point,consultant,cpf,client,year,month,quota,outcome")
    );
    assert_eq!(export.stdout.lines().count(), 1 + 6);

    // Resumed: only the client in error is taken again, and nothing is downloaded twice.
    let pdfs = env.sandbox.faults.seen(Route::CanopusPdf);
    let again = env.run(&[
        "download-boletos",
        "--ponto-venda",
        "17.308",
        "--ano",
        "2025",
        "--mes",
        "11",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    // The saved ones are not taken again; the error, the unknown CPF and the quota without an
    // installment are (an installment may appear later in the month).
    assert_eq!(summary["items"]["total"], 3, "{again:?}");
    assert_eq!(env.sandbox.faults.seen(Route::CanopusPdf), pdfs + 1);
}

#[test]
fn a_renamed_portal_control_is_an_error_not_an_unknown_cpf() {
    let env = Env::new();
    env.configure("", "quota_link = \"lnkCotaNova\"");
    setup(&env, &[("1/1", &digits(101), "CLIENTE", "Em dia")]);
    env.sandbox
        .canopus
        .set_client(&digits(101), vec![quota("101", "CLIENTE", &["2025-11-10"])]);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("the result grid `grdBuscaAvancada` has 2 row(s) but no `lnkCotaNova` link: the portal changed; check `[canopus] quota_link` (page saved to `"),
        "{out:?}"
    );
}

#[test]
fn a_forced_client_is_downloaded_again_into_its_own_file() {
    let env = Env::new();
    setup(&env, &[("1/1", &digits(111), "CLIENTE", "Em dia")]);
    env.sandbox
        .canopus
        .set_client(&digits(111), vec![quota("111", "CLIENTE", &["2025-11-10"])]);
    assert_eq!(
        env.run(&["download-boletos", "--ano", "2025", "--mes", "11"])
            .code,
        0
    );
    let out = env.run(&[
        "download-boletos",
        "--ano",
        "2025",
        "--mes",
        "11",
        "--cpf",
        &cpf(111).formatted(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.faults.seen(Route::CanopusPdf), 2);
    assert_eq!(files_under(&env.downloads()).len(), 1);
    let attempts: i64 = env.query("SELECT attempts FROM boletos");
    assert_eq!(attempts, 2);
}

#[test]
fn an_expired_session_logs_in_again_and_goes_on() {
    let env = Env::new();
    env.configure("", "concurrency = 1");
    clients_with_a_boleto(&env, &[(11, "CLIENTE UM"), (12, "CLIENTE DOIS")]);
    env.sandbox.canopus.expire_sessions_after(6);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.sandbox.canopus.logins(), 2);
    assert_eq!(files_under(&env.downloads()).len(), 2);
}

#[test]
fn a_rejected_postback_names_the_control() {
    let env = Env::new();
    env.configure("", "concurrency = 1");
    setup(&env, &[("1/1", &digits(21), "CLIENTE", "Em dia")]);
    env.sandbox
        .canopus
        .set_client(&digits(21), vec![quota("21", "CLIENTE", &["2025-11-10"])]);
    env.sandbox.canopus.reject_postbacks(1);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: the portal rejected the postback of `ctl00$Conteudo$cbxCriterioBusca` on `/canopus/WWW/CONAT/frmBuscaCota.aspx` (Invalid postback or callback argument)"),
        "{out:?}"
    );
}

#[test]
fn a_wrong_password_stops_the_sales_point_and_marks_no_client() {
    let env = Env::new();
    setup(&env, &[("1/1", &digits(31), "CLIENTE", "Em dia")]);
    assert_eq!(set_credentials(&env, "errada").code, 0);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("sales point 17.308: login refused by the portal: Usuário ou senha inválidos.; its clients were left untouched"),
        "{out:?}"
    );
    let rows: i64 = env.query("SELECT COUNT(*) FROM boletos");
    assert_eq!(rows, 0);
    assert!(!out.stderr.contains("errada"));
}

#[test]
fn homonyms_and_hostile_names_never_collide_or_escape() {
    let env = Env::new();
    setup(
        &env,
        &[
            ("1/1", &digits(41), "JOSÉ DA SILVA", "Em dia"),
            ("2/1", &digits(42), "JOSÉ DA SILVA - 70%", "Em dia"),
            ("3/1", &digits(43), "../../etc/passwd", "Em dia"),
        ],
    );
    for n in [41, 42, 43] {
        env.sandbox.canopus.set_client(
            &digits(n),
            vec![quota(&format!("{n}"), "X", &["2025-03-10"])],
        );
    }
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "3"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut names: Vec<String> = files_under(&env.downloads())
        .iter()
        .map(|p| {
            p.strip_prefix(env.downloads())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    names.sort();
    let suffix = |n: u32| cpf(n).digits()[7..].to_string();
    let (first, second) = (suffix(41), suffix(42));
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.contains(&"DENER/ETC_PASSWD_MARÇO.pdf".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"DENER/JOSÉ_DA_SILVA_MARÇO.pdf".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("DENER/JOSÉ_DA_SILVA_MARÇO_{first}.pdf"))
            || names.contains(&format!("DENER/JOSÉ_DA_SILVA_MARÇO_{second}.pdf")),
        "{names:?}"
    );
}

#[test]
fn an_interrupted_run_resumes_without_downloading_again() {
    let env = Env::new();
    env.configure("", "concurrency = 1");
    clients_with_a_boleto(&env, &[(51, "PRIMEIRO"), (52, "SEGUNDO")]);
    // The first PDF goes through; the second is held, and the process is killed there.
    env.sandbox.faults.hold_after(Route::CanopusPdf, 1);
    let mut child = env.spawn(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(env.sandbox.faults.wait_held(Route::CanopusPdf, 1, WAIT), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    env.sandbox.faults.release_all();
    assert_eq!(files_under(&env.downloads()).len(), 1);

    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("run #1 of `download-boletos` was left running by a process that died"),
        "{out:?}"
    );
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        summary["items"]["total"], 1,
        "only the second client is taken again: {out:?}"
    );
    assert_eq!(env.sandbox.faults.seen(Route::CanopusPdf), 3);
    assert_eq!(files_under(&env.downloads()).len(), 2);
}

#[test]
fn credentials_are_stored_encrypted_and_never_listed() {
    let env = Env::new();
    setup(&env, &[("1/1", &digits(61), "CLIENTE", "Em dia")]);
    let list = env.run(&["credentials", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stdout
            .contains("17.308\t24627\tstored (encrypted)\t1\t"),
        "{list:?}"
    );
    assert!(!list.stdout.contains("s3nha"));
    let token: String = env.query("SELECT password_token FROM sales_points");
    assert!(
        !token.contains("s3nha") && token.starts_with("gAAAAA"),
        "{token}"
    );
    assert_eq!(
        crm_jobs::secret_box::SecretBox::new(FERNET_KEY)
            .unwrap()
            .decrypt(&token)
            .unwrap(),
        "s3nha"
    );
    // Another key: one clear error, the sales point stopped, nothing else changes.
    let other = crm_jobs::secret_box::generate_key();
    let out = env
        .cmd(&["download-boletos", "--ano", "2025", "--mes", "11"])
        .env("CRM_JOBS_FERNET_KEY", other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the stored secret does not decrypt with this Fernet key"),
        "{stderr}"
    );
    assert_eq!(env.sandbox.canopus.logins(), 0);
}

#[test]
fn spreadsheet_rows_that_cannot_be_read_are_reported() {
    let env = Env::new();
    let file = spreadsheet(
        &env,
        "ruim.xlsx",
        &[
            ("1/1", &digits(71), "BOM", "Em dia"),
            ("2/1", "123.456.789-00", "CPF ERRADO", "Em dia"),
            ("3/1", &digits(72), "", "Em dia"),
        ],
    );
    let out = env.run(&[
        "import",
        "clients",
        file.to_str().unwrap(),
        "--consultor",
        "dener",
    ]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    assert!(out.stderr.contains(&format!("{f}: sheet `Sheet1`, row 14: invalid CPF: CPF check digits do not match (a typo?); row skipped")), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{f}: sheet `Sheet1`, row 15: the name is empty; row skipped"
        )),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("imported 1 client(s) of DENER"),
        "{out:?}"
    );
    assert!(out.stderr.contains("header on row 12"), "{out:?}");
    let (point, name, value): (String, String, i64) = env
        .db()
        .query_row(
            "SELECT s.code, c.name, c.value_centavos FROM clients c JOIN sales_points s ON s.id = c.sales_point_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (point.as_str(), name.as_str(), value),
        ("17.308", "BOM", 51_234)
    );
}

#[test]
fn next_years_boleto_puts_last_years_file_aside_instead_of_over_it() {
    let env = Env::new();
    setup(&env, &[("1/1", &digits(81), "ROSA MARIA", "Em dia")]);
    env.sandbox.canopus.set_client(
        &digits(81),
        vec![quota("81", "ROSA MARIA", &["2025-11-10", "2026-11-10"])],
    );
    assert_eq!(
        env.run(&["download-boletos", "--ano", "2025", "--mes", "11"])
            .code,
        0
    );
    let out = env.run(&["download-boletos", "--ano", "2026", "--mes", "11"]);
    assert_eq!(out.code, 0, "{out:?}");
    let folder = env.downloads().join("DENER");
    assert!(folder.join("ROSA_MARIA_NOVEMBRO.pdf").exists());
    assert!(folder.join("2025").join("ROSA_MARIA_NOVEMBRO.pdf").exists());
    let paths: Vec<String> = {
        let db = env.db();
        let mut stmt = db
            .prepare("SELECT pdf_path FROM boletos ORDER BY year")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        paths[0].ends_with("DENER/2025/ROSA_MARIA_NOVEMBRO.pdf"),
        "{paths:?}"
    );
    assert!(
        paths[1].ends_with("DENER/ROSA_MARIA_NOVEMBRO.pdf"),
        "{paths:?}"
    );
    // Asking again for 2025 replaces last year's own file where it now is.
    let again = env.run(&[
        "download-boletos",
        "--ano",
        "2025",
        "--mes",
        "11",
        "--cpf",
        &digits(81),
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(files_under(&env.downloads()).len(), 2);
}

#[test]
fn dry_run_lists_the_clients_and_logs_in_nowhere() {
    let env = Env::new();
    setup(
        &env,
        &[
            ("1/1", &digits(91), "CLIENTE UM", "Em dia"),
            ("2/1", &digits(92), "CLIENTE DOIS", "CANCELADO"),
        ],
    );
    let out = env.run(&[
        "download-boletos",
        "--dry-run",
        "--ano",
        "2025",
        "--mes",
        "11",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("17.308\tDENER\t"), "{out:?}");
    assert!(
        out.stderr
            .contains("dry run: 1 client(s) would be taken for 11/2025"),
        "{out:?}"
    );
    assert_eq!(env.sandbox.canopus.logins(), 0);
}

/// Whether the PDF at `path` is the boleto of quota `group/quota` of the client `cpf_digits`:
/// the sandbox's PDF names its owner.
pub(crate) fn holds_boleto_of(path: &std::path::Path, cpf_digits: &str, quota: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    bytes.starts_with(b"%PDF-")
        && text.contains(&format!(
            "CPF {cpf_digits} cota {}",
            quota.replace('/', "-")
        ))
}

/// Every saved file, with whose boleto it holds: each must be the client's its name says.
pub(crate) fn assert_each_file_is_its_clients(env: &Env, expected: &[(&str, String, &str)]) {
    let files = files_under(&env.downloads());
    assert_eq!(files.len(), expected.len(), "{files:?}");
    for (file_part, cpf_digits, quota) in expected {
        let file = files
            .iter()
            .find(|f| f.to_string_lossy().contains(file_part))
            .unwrap_or_else(|| panic!("no file named like `{file_part}` in {files:?}"));
        assert!(
            holds_boleto_of(&env.downloads().join(file), cpf_digits, quota),
            "`{}` does not hold the boleto of {cpf_digits} {quota}",
            file.display()
        );
    }
}

#[test]
fn each_dress_of_the_portal_gives_each_client_its_own_boleto() {
    use crm_jobs::sandbox::Dress;
    for dress in [Dress::AspNet4, Dress::Plain, Dress::Alt] {
        let env = Env::new();
        setup(
            &env,
            &[
                ("1/1", &digits(701), "ANA", "Em dia"),
                ("2/1", &digits(702), "BRUNO DUAS COTAS", "Em dia"),
                ("3/1", &digits(703), "CARLA", "Em dia"),
            ],
        );
        let c = &env.sandbox.canopus;
        c.set_dress(dress);
        c.set_client(&digits(701), vec![quota("701", "ANA", &["2025-11-10"])]);
        c.set_client(
            &digits(702),
            vec![
                quota("7021", "BRUNO DUAS COTAS", &["2025-11-10"]),
                quota("7022", "BRUNO DUAS COTAS", &["2025-11-12"]),
            ],
        );
        c.set_client(&digits(703), vec![quota("703", "CARLA", &["2025-11-10"])]);
        let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
        assert_eq!(out.code, 0, "{dress:?}: {out:?}");
        assert_each_file_is_its_clients(
            &env,
            &[
                ("ANA_NOVEMBRO", digits(701), "701/0123"),
                ("BRUNO_DUAS_COTAS_NOVEMBRO_7021", digits(702), "7021/0123"),
                ("BRUNO_DUAS_COTAS_NOVEMBRO_7022", digits(702), "7022/0123"),
                ("CARLA_NOVEMBRO", digits(703), "703/0123"),
            ],
        );
        for (cpf, q) in [
            (701, "701/0123"),
            (702, "7021/0123"),
            (702, "7022/0123"),
            (703, "703/0123"),
        ] {
            assert_eq!(c.downloads(&digits(cpf), q), 1, "{dress:?} {cpf} {q}");
        }
    }
}

#[test]
fn a_lost_selection_never_files_another_clients_boleto() {
    use crm_jobs::sandbox::Misselect;
    let env = Env::new();
    // One session, clients in name order: ANA first, then BRUNO, then CARLA.
    env.configure("", "concurrency = 1");
    clients_with_a_boleto(&env, &[(711, "ANA"), (712, "BRUNO"), (713, "CARLA")]);
    let c = &env.sandbox.canopus;
    // BRUNO's quota link answers "Selecione um registro válido." (the session stays on ANA);
    // CARLA's goes to the client page while the session stays on ANA.
    c.misselect(&digits(712), Misselect::NotSelected, 1);
    c.misselect(&digits(713), Misselect::PreviousClient, 1);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!("BRUNO (DENER, {}): error (712/0123", cpf(712).masked())) && out.stderr.contains("error (712/0123: error: the portal did not open quota `712/0123`: it answered the search page again (`Selecione um registro válido`), so it may still be on another client; nothing was saved for this quota (page saved to `"),
        "{out:?}"
    );
    let ana = cpf(711).masked();
    let carla = cpf(713).masked();
    assert!(
        out.stderr.contains(&format!("error (713/0123: error: the client page opened for quota `713/0123` does not show the CPF searched (`{carla}`); it shows `{ana}`; nothing was saved for this quota (page saved to `")),
        "{out:?}"
    );
    assert_each_file_is_its_clients(&env, &[("ANA_NOVEMBRO", digits(711), "711/0123")]);
    assert_eq!(
        c.downloads_total(),
        1,
        "nothing downloaded for BRUNO or CARLA"
    );

    // The saved pages: private, naming the step and the request, holding the page.
    let pages: Vec<_> = std::fs::read_dir(env.path("store/diagnostics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    for page in &pages {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(page).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}", page.display());
        let text = std::fs::read_to_string(page).unwrap();
        assert!(text.contains("step: open quota"), "{text}");
        assert!(
            text.contains("request: POST http://")
                && text
                    .contains("__EVENTTARGET = ctl00$Conteudo$grdBuscaAvancada$ctl03$lnkGrupoCota"),
            "{text}"
        );
        assert!(text.contains("</html>"), "the page itself follows: {text}");
        assert!(out.stderr.contains(&page.display().to_string()));
    }

    // The next run takes the two again, each into its own file.
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_each_file_is_its_clients(
        &env,
        &[
            ("ANA_NOVEMBRO", digits(711), "711/0123"),
            ("BRUNO_NOVEMBRO", digits(712), "712/0123"),
            ("CARLA_NOVEMBRO", digits(713), "713/0123"),
        ],
    );
}

#[test]
fn a_session_cap_goes_on_with_the_next_quota_and_downloads_each_once() {
    for concurrency in ["1", "2"] {
        let env = Env::new();
        env.configure("", &format!("concurrency = {concurrency}"));
        let clients = [(721, "ANA"), (722, "BRUNO"), (723, "CARLA")];
        let rows: Vec<(String, String)> = clients
            .iter()
            .map(|(n, _)| (format!("{n}/1"), digits(*n)))
            .collect();
        let table: Vec<(&str, &str, &str, &str)> = rows
            .iter()
            .zip(&clients)
            .map(|((q, d), (_, name))| (q.as_str(), d.as_str(), *name, "Em dia"))
            .collect();
        setup(&env, &table);
        let c = &env.sandbox.canopus;
        // Two quotas a client: more requests than one session may make.
        for (n, name) in clients {
            c.set_client(
                &digits(n),
                vec![
                    quota(&format!("{n}1"), name, &["2025-11-10"]),
                    quota(&format!("{n}2"), name, &["2025-11-20"]),
                ],
            );
        }
        c.set_session_cap(Some(15));
        let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            c.logins() > 3,
            "sessions were capped: {} logins",
            c.logins()
        );
        let mut expected = Vec::new();
        for (n, name) in clients {
            for part in 1..=2 {
                let q = format!("{n}{part}/0123");
                assert_eq!(c.downloads(&digits(n), &q), 1, "{name} {q}");
                expected.push((
                    format!("{name}_NOVEMBRO_{n}{part}-0123"),
                    digits(n),
                    q.clone(),
                ));
            }
        }
        let expected: Vec<(&str, String, &str)> = expected
            .iter()
            .map(|(f, d, q)| (f.as_str(), d.clone(), q.as_str()))
            .collect();
        assert_each_file_is_its_clients(&env, &expected);
    }
}

#[test]
fn a_changed_login_page_is_saved_without_the_password_and_old_pages_are_cleaned_up() {
    let env = Env::new();
    env.configure("", "login_message_id = \"lblAviso\"");
    setup(&env, &[("1/1", &digits(731), "CLIENTE", "Em dia")]);
    assert_eq!(set_credentials(&env, "errada").code, 0);
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("sales point 17.308: the login page came back without an error message in `lblAviso`: the portal changed; check `[canopus] user_field`, `password_field` and `login_message_id` (page saved to `"),
        "{out:?}"
    );
    let pages: Vec<_> = std::fs::read_dir(env.path("store/diagnostics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pages.len(), 1);
    let text = std::fs::read_to_string(&pages[0]).unwrap();
    assert!(text.contains("step: login"), "{text}");
    assert!(text.contains("edtSenha = (redacted)"), "{text}");
    assert!(
        !text.contains("errada"),
        "the password never reaches a file"
    );
    assert!(text.contains("Usuário ou senha inválidos."), "{text}");

    // Kept while young; removed by cleanup once older than `[cleanup] diagnostics_days`.
    let out = env.run(&["cleanup", "--only", "diagnostics"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(pages[0].exists());
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&pages[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = env.run(&["cleanup", "--only", "diagnostics"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("removed 1 saved page(s)"), "{out:?}");
    assert!(!pages[0].exists());
}

#[test]
fn spreadsheet_cpfs_that_lost_any_number_of_leading_zeros_are_padded() {
    let env = Env::new();
    // `000.523.952-43` stored as the number 52395243 (three zeros lost).
    let small = crm_jobs::domain::cpf::Cpf::parse("00052395243").unwrap();
    setup(&env, &[("1/1", "52395243", "ZEROS PERDIDOS", "Em dia")]);
    env.sandbox.canopus.set_client(
        small.digits(),
        vec![quota("52", "ZEROS PERDIDOS", &["2025-11-10"])],
    );
    let stored: String = env.query("SELECT cpf FROM clients");
    assert_eq!(stored, "00052395243");
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_each_file_is_its_clients(
        &env,
        &[("ZEROS_PERDIDOS", small.digits().to_string(), "52/0123")],
    );
}

#[test]
fn a_portal_that_cannot_be_reached_at_login_leaves_the_clients_for_the_next_run() {
    let env = Env::new();
    clients_with_a_boleto(&env, &[(741, "ANA")]);
    // Every login attempt of this run answered 503: one try and its 3 tries in place.
    env.sandbox.faults.push(
        Route::CanopusLogin,
        crm_jobs::sandbox::Fault::Status {
            status: 503,
            retry_after: None,
        },
        4,
    );
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("sales point 17.308: the portal answered 503 Service Unavailable to `/canopus/WWW/frmCorCCCnsLogin.aspx`; its clients were left for the next run"),
        "{out:?}"
    );
    assert_eq!(
        env.sandbox.faults.seen(Route::CanopusLogin),
        4,
        "one try and `[canopus] retries` (3) more"
    );
    let rows: i64 = env.query("SELECT COUNT(*) FROM boletos");
    assert_eq!(rows, 0, "no client is marked failed because of the login");
    // The portal back: the next run takes the client.
    let out = env.run(&["download-boletos", "--ano", "2025", "--mes", "11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_each_file_is_its_clients(&env, &[("ANA_NOVEMBRO", digits(741), "741/0123")]);
}
