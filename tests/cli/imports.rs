//! `import contracts` and `import invoices`: bad rows are reported and import nothing.

use crate::support::*;

#[test]
fn bad_contract_rows_are_reported_and_the_rest_imports() {
    let env = Env::new();
    let good = cpf(1);
    let csv = format!(
        "\u{feff}Contrato;CPF;Nome;Data_Instalacao;Ordem_Servico\n\
         A1;{};ANA;05/06/2025;OS-1\n\
         A2;123.456.789-00;BRUNO;2025-06-05;OS-2\n\
         A3;{};CARLA;31/02/2025;OS-3\n\
         A4;{};;2025-06-05;OS-4\n\
         A5;111.111.111-11;DANI;2025-06-05;OS-5\n\
         A6;{};EDU;2025-06-05;OS-6;extra\n\
         A7;{};FABI;2025-06-05;\n",
        good.formatted(),
        cpf(3).digits(),
        cpf(4).digits(),
        cpf(6).digits(),
        // A spreadsheet that lost the leading zero of a CPF.
        cpf(7).digits().trim_start_matches('0'),
    );
    let file = env.path("contratos.csv");
    std::fs::write(&file, csv).unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    for expected in [
        format!("{f}:3: invalid CPF: CPF check digits do not match (a typo?); row skipped"),
        format!(
            "{f}:4: `data_instalacao` = `31/02/2025` is not a date (expected YYYY-MM-DD or DD/MM/YYYY); row skipped"
        ),
        format!("{f}:5: `nome` is empty; row skipped"),
        format!("{f}:6: invalid CPF: CPF has all digits equal; row skipped"),
        format!("{f}:7: the row has 6 fields but the header has 5; row skipped"),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in {out:?}"
        );
    }
    assert!(out.stderr.contains("imported 2 contract(s)"), "{out:?}");
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    let invoices: i64 = env.query("SELECT COUNT(*) FROM invoices");
    assert_eq!((contracts, invoices), (2, 20));
    let first_due: String = env.query(
        "SELECT due_date FROM invoices i JOIN contracts c ON c.id = i.contract_id WHERE c.contract_number = 'A1' AND number = 1",
    );
    assert_eq!(first_due, "2025-06-30");
    let padded: String = env.query("SELECT cpf FROM contracts WHERE contract_number = 'A7'");
    assert_eq!(padded, cpf(7).digits());
    assert!(!out.stderr.contains("123.456.789-00"), "no CPF in messages");

    // Importing again updates, never duplicates.
    let again = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert!(again.stderr.contains("(0 new, 2 updated"), "{again:?}");
}

#[test]
fn bad_invoice_rows_are_reported() {
    let env = Env::new();
    env.one_contract(1);
    let file = env.path("faturas.csv");
    std::fs::write(
        &file,
        "contrato,numero,vencimento,valor\nC1,2,2025-08-01,\"R$ 99,90\"\nC9,1,2025-07-01,\nC1,11,2025-07-01,\nC1,3,amanhã,\nC1,4,2025-09-30,abc\n",
    )
    .unwrap();
    let out = env.run(&["import", "invoices", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    for expected in [
        format!(
            "{f}:3: contract `C9` is unknown: import it first with `crm-jobs import contracts`; row skipped"
        ),
        format!("{f}:4: `numero` = `11` is not an invoice number from 1 to 10; row skipped"),
        format!(
            "{f}:5: `vencimento` = `amanhã` is not a date (expected YYYY-MM-DD or DD/MM/YYYY); row skipped"
        ),
        format!(
            "{f}:6: `valor`: `abc` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`); row skipped"
        ),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in {out:?}"
        );
    }
    let (due, source, amount, available): (String, String, i64, String) = env
        .db()
        .query_row(
            "SELECT due_date, due_date_source, expected_amount_centavos, available_from FROM invoices WHERE number = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (due.as_str(), source.as_str(), amount, available.as_str()),
        ("2025-08-01", "imported", 9_990, "2025-07-29")
    );
    // A later contract import keeps the imported date.
    env.one_contract(1);
    let due: String = env.query("SELECT due_date FROM invoices WHERE number = 2");
    assert_eq!(due, "2025-08-01");
}

#[test]
fn a_file_without_the_needed_columns_is_one_clear_error() {
    let env = Env::new();
    let file = env.path("x.csv");
    std::fs::write(&file, "contract,document\n1,2\n").unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: `{}` has no `contrato` column (its header row is: contract, document); expected columns: contrato, cpf, nome, data_instalacao",
            file.display()
        )
    );
}

/// Issue 12: the operator's own sheet (`contrato,os,cpf,nome,data_instalacao,safra,valor,...`):
/// `os` and `valor` were dropped silently, so a value mismatch was never detected unless the due
/// dates were imported too.
#[test]
fn the_operators_sheet_gives_the_service_order_and_the_expected_amount() {
    let env = Env::new();
    let c = cpf(30);
    let file = env.path("planilha.csv");
    std::fs::write(
        &file,
        format!(
            "contrato,os,cpf,nome,data_instalacao,safra,valor,vencimentos\n\
             C30,OS-777,{},ANA,05/06/2025,2025-06,\"R$ 120,00\",30/06/2025\n",
            c.formatted()
        ),
    )
    .unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "imported 1 contract(s) from `{}` (1 new, 0 updated, 10 expected invoices each); 0 row(s) skipped; ignored column(s): vencimentos",
            file.display()
        )
    );
    let os: String = env.query("SELECT service_order FROM contracts");
    assert_eq!(os, "OS-777");
    let amounts: String = env.query(
        "SELECT group_concat(expected_amount_centavos || '/' || expected_amount_source, ' ')
         FROM (SELECT * FROM invoices ORDER BY number)",
    );
    assert_eq!(amounts, ["12000/contract"; 10].join(" "));

    // An invoice's own `valor` wins, whichever file is imported first.
    let faturas = env.path("faturas.csv");
    std::fs::write(
        &faturas,
        "contrato,numero,vencimento,valor\nC30,2,30/07/2025,\"99,90\"\n",
    )
    .unwrap();
    let inv = env.run(&["import", "invoices", faturas.to_str().unwrap()]);
    assert_eq!(inv.code, 0, "{inv:?}");
    std::fs::write(
        &file,
        format!(
            "contrato,os,cpf,nome,data_instalacao,safra,valor\nC30,OS-777,{},ANA,05/06/2025,2025-06,\"R$ 99,90\"\n",
            c.formatted()
        ),
    )
    .unwrap();
    let again = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert!(
        again.stderr.ends_with("0 row(s) skipped\n"),
        "no column ignored: {again:?}"
    );
    std::fs::write(
        &file,
        format!(
            "contrato,os,cpf,nome,data_instalacao,safra,valor\nC30,OS-777,{},ANA,05/06/2025,2025-06,\"R$ 120,00\"\n",
            c.formatted()
        ),
    )
    .unwrap();
    env.run(&["import", "contracts", file.to_str().unwrap()]);
    let amounts: String = env.query(
        "SELECT group_concat(number || ':' || expected_amount_centavos || '/' || expected_amount_source, ' ')
         FROM (SELECT * FROM invoices WHERE number <= 3 ORDER BY number)",
    );
    assert_eq!(amounts, "1:12000/contract 2:9990/invoice 3:12000/contract");

    // Nio says R$ 99,90: invoice 1's mismatch is now seen; invoice 2 matches its own amount.
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("3000", &[1, 2])]);
    let fetch = env.run(&["fetch-invoices"]);
    assert_eq!(fetch.code, 0, "{fetch:?}");
    assert!(
        fetch.stderr.contains(
            "invoice 1: value_mismatch: the spreadsheet says R$ 120,00 but Nio says R$ 99,90 (invoice `300001`); nothing applied"
        ),
        "{fetch:?}"
    );
    let outcomes: String = env.query(
        "SELECT group_concat(match_outcome, ' ') FROM (SELECT * FROM invoices WHERE number <= 2 ORDER BY number)",
    );
    assert_eq!(outcomes, "value_mismatch matched");
}

/// Issue 12: `FILE:LINE` is the row's physical line whatever the line endings, blank lines and
/// quoted fields that span lines; every line after a CRLF row was one short. Lines: 1 header,
/// 2 A1, 3 blank, 4 A2, 5-8 A3 (two quoted fields over four lines), 9 A4, 10 blank (`\n`), 11
/// A5, 12 A6 (ends with a lone `\r`), 13 A7.
#[test]
fn rejected_rows_name_their_physical_line() {
    let env = Env::new();
    let file = env.path("crlf.csv");
    let text = format!(
        "contrato;cpf;nome;data_instalacao;obs\r\n\
         A1;{};ANA;2025-06-05;\r\n\
         \r\n\
         A2;123.456.789-00;BIA;2025-06-05;\r\n\
         A3;{};\"CARLA\r\nDE SOUZA\";2025-06-05;\"linha 1\r\nlinha 2\r\nlinha 3\"\r\n\
         A4;{};DANI;31/02/2025;\r\n\
         \n\
         A5;111.111.111-11;EDU;2025-06-05;\n\
         A6;{};FABI;2025-06-05;\r\
         A7;{};;2025-06-05;\r\n",
        cpf(31).formatted(),
        cpf(32).formatted(),
        cpf(33).formatted(),
        cpf(34).formatted(),
        cpf(35).formatted(),
    );
    std::fs::write(&file, text).unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("row skipped"))
        .collect();
    assert_eq!(
        warnings,
        [
            format!(
                " WARN {f}:4: invalid CPF: CPF check digits do not match (a typo?); row skipped"
            ),
            format!(
                " WARN {f}:9: `data_instalacao` = `31/02/2025` is not a date (expected YYYY-MM-DD or DD/MM/YYYY); row skipped"
            ),
            format!(" WARN {f}:11: invalid CPF: CPF has all digits equal; row skipped"),
            format!(" WARN {f}:13: `nome` is empty; row skipped"),
        ]
    );
    assert!(
        out.stderr
            .contains("; 4 row(s) skipped; ignored column(s): obs"),
        "{out:?}"
    );
    let names: String = env.query(
        "SELECT group_concat(customer_name, '|') FROM (SELECT * FROM contracts ORDER BY contract_number)",
    );
    assert_eq!(names, "ANA|CARLA\r\nDE SOUZA|FABI");
}

/// Issue 15 (it overrides issue 12's "the first is read"): a column the import reads, twice in
/// the header, refuses the file with both places: which `valor` holds the amount is not for the
/// import to guess.
#[test]
fn a_column_the_import_reads_twice_in_the_header_refuses_the_file() {
    let env = Env::new();
    assert_eq!(env.run(&["status"]).code, 0);
    let file = env.path("extra.csv");
    std::fs::write(
        &file,
        format!(
            "contrato;cpf;nome;data_instalacao;valor;Valor ;;\nA1;{};ANA;2025-06-05;99,90;120,00;nota;\n",
            cpf(36).formatted()
        ),
    )
    .unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "error: `{}`: the header has the column `valor` twice, column 5 (`valor`) and column 6 (`Valor`): keep one and import again; nothing was imported",
            file.display()
        )),
        "{out:?}"
    );
    let contracts: i64 = env.query("SELECT COUNT(*) FROM contracts");
    assert_eq!(contracts, 0);
    // `import invoices` likewise.
    let file = env.path("due.csv");
    std::fs::write(
        &file,
        "contrato,numero,vencimento,NUMERO\nA1,1,2025-07-10,2\n",
    )
    .unwrap();
    let out = env.run(&["import", "invoices", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "the header has the column `numero` twice, column 2 (`numero`) and column 4 (`NUMERO`)"
        ),
        "{out:?}"
    );
}

/// A second column of a name the import does not read, and a column without a name that holds
/// a value, are named in the summary; an empty unnamed column (a trailing `;`) is not.
#[test]
fn repeated_unused_and_unnamed_columns_are_named_in_the_summary() {
    let env = Env::new();
    let file = env.path("extra.csv");
    std::fs::write(
        &file,
        format!(
            "contrato;cpf;nome;data_instalacao;valor;obs;Obs;;\nA1;{};ANA;2025-06-05;99,90;a;b;nota;\n",
            cpf(36).formatted()
        ),
    )
    .unwrap();
    let out = env.run(&["--json", "import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .ends_with("; ignored column(s): obs, Obs (repeated), column 8 (no name)\n"),
        "{out:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json["ignored_columns"],
        serde_json::json!(["obs", "Obs (repeated)", "column 8 (no name)"])
    );
    let amount: i64 = env.query("SELECT expected_amount_centavos FROM invoices WHERE number = 1");
    assert_eq!(amount, 9_990);
}

#[test]
fn a_csv_cpf_that_lost_any_number_of_leading_zeros_is_padded() {
    let env = Env::new();
    // `000.523.952-43` as a spreadsheet exports the number: three zeros lost.
    let file = env.path("zeros.csv");
    std::fs::write(
        &file,
        "contrato,cpf,nome,data_instalacao\nZ1,52395243,ZEROS PERDIDOS,2025-06-05\n",
    )
    .unwrap();
    let out = env.run(&["import", "contracts", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let stored: String = env.query("SELECT cpf FROM contracts WHERE contract_number = 'Z1'");
    assert_eq!(stored, "00052395243");
}
