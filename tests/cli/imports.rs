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
