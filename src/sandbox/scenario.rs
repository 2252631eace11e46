//! Sample data for the demo and the benchmarks: contracts (as the operator's CSV) and the Nio
//! answers that go with them, with the cases an operator meets: paid invoices, unknown CPFs,
//! two invoices on one date, a spreadsheet amount that disagrees, a PDF that is not a PDF, a
//! customer whose many open invoices in few debts fill more than one page.

use chrono::{Days, NaiveDate};

use super::nio::{NioState, PdfKind, SbDebt, SbInvoice};
use crate::domain::cpf::Cpf;
use crate::domain::due_dates;

const NAMES: &[&str] = &[
    "MARIA DA SILVA",
    "JOÃO PEREIRA",
    "ANA CAROLINA SOUZA",
    "CARLOS EDUARDO LIMA",
    "FERNANDA OLIVEIRA",
    "JOSÉ RAIMUNDO SANTOS",
    "PATRÍCIA GOMES",
    "LUIZ FERNANDO COSTA",
];

/// What a scenario produced.
pub struct Scenario {
    /// `contrato,cpf,nome,data_instalacao,ordem_servico,safra`
    pub contracts_csv: String,
    /// `contrato,numero,vencimento,valor` (imported due dates and amounts)
    pub invoices_csv: String,
    pub contracts: usize,
}

/// Options for [`build`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Mix in unknown CPFs, ambiguous dates, value mismatches, paid invoices, bad PDFs and
    /// customers with more open invoices than one page holds.
    pub varied: bool,
}

/// Builds `n` contracts installed before `today` and gives the sandbox their open invoices.
pub fn build(nio: &NioState, n: usize, today: NaiveDate, opts: Options) -> Scenario {
    let mut contracts_csv = String::from("contrato,cpf,nome,data_instalacao,ordem_servico,safra\n");
    let mut invoices_csv = String::from("contrato,numero,vencimento,valor\n");
    for i in 0..n {
        let cpf = Cpf::from_base(100_000_000 + (i as u32) * 7919);
        let installed = today - Days::new(35 + (i as u64 * 37) % 250);
        let contract = format!("{}", 7_000_100 + i);
        let name = NAMES[i % NAMES.len()];
        contracts_csv.push_str(&format!(
            "{contract},{},{name},{},OS-{},{}\n",
            cpf.formatted(),
            installed.format("%d/%m/%Y"),
            40_000 + i,
            installed.format("%Y-%m")
        ));
        if opts.varied && i % 17 == 5 {
            // Nio does not know this CPF: it answers 400.
            continue;
        }
        let amount = if i % 3 == 0 { 12_990 } else { 9_990 };
        let mut invoices = Vec::new();
        for n in 1..=due_dates::EXPECTED_INVOICES {
            let due = due_dates::due_date(installed, n);
            if due_dates::available_from(installed, n, due) > today {
                break;
            }
            let paid =
                opts.varied && due + Days::new(45) < today && !(i + n as usize).is_multiple_of(3);
            if paid {
                continue;
            }
            let mut inv = SbInvoice::new(&format!("{}{:02}", 90_000_000 + i, n), due, amount);
            if opts.varied && i % 29 == 11 && n == 1 {
                inv.pdf = PdfKind::NotPdf;
            }
            if opts.varied && i % 7 == 2 {
                inv.pdf = PdfKind::JsonLink;
            }
            invoices.push(inv);
        }
        if opts.varied
            && i % 23 == 7
            && let Some(first) = invoices.first().cloned()
        {
            let mut twin = first.clone();
            twin.id = format!("{}99", first.id);
            invoices.push(twin);
        }
        if opts.varied && i % 19 == 3 {
            let due = due_dates::due_date(installed, 1);
            invoices_csv.push_str(&format!(
                "{contract},1,{},\"{}\"\n",
                due.format("%d/%m/%Y"),
                crate::domain::money::format_brl(amount + 1_000)
            ));
        }
        if opts.varied && i % 13 == 4 {
            // Months overdue on an older product: 52 open invoices before this contract's, all
            // in 3 debts, so that its invoices sit past the first page of 50.
            let mut all: Vec<SbInvoice> = (0..52u32)
                .map(|k| {
                    SbInvoice::new(
                        &format!("{}{k:03}", 80_000_000 + i),
                        NaiveDate::from_ymd_opt(2019, 1, 10).unwrap_or(today)
                            + chrono::Months::new(k),
                        5_990,
                    )
                })
                .collect();
            all.extend(invoices);
            nio.set_customer(
                cpf.digits(),
                SbDebt::spread(&format!("D{}", 500_000 + i), all, 3),
            );
            continue;
        }
        nio.set_customer(
            cpf.digits(),
            vec![SbDebt {
                debt_id: format!("D{}", 500_000 + i),
                invoices,
            }],
        );
    }
    Scenario {
        contracts_csv,
        invoices_csv,
        contracts: n,
    }
}

/// Sample consórcio clients: the portal's quotas and boletos, and the consultant spreadsheet
/// rows (`G/C`, `CPF`, `Concorciado`, `SITUAÇÃO`) that list them. Includes a CPF the portal does
/// not know, a client without an open installment, one with two quotas, homonyms and a
/// commission note in a name.
pub fn consorcio(canopus: &super::CanopusState, n: usize, due: NaiveDate) -> Vec<[String; 4]> {
    use super::canopus::{SbBoleto, SbQuota};
    let names = [
        "WESLEY JUNIOR DIDEROT CHERISCAR - 70%",
        "MARIA APARECIDA",
        "JOSÉ DA SILVA",
        "JOSÉ DA SILVA 50%",
    ];
    let mut rows = Vec::new();
    for i in 0..n {
        let cpf = Cpf::from_base(300_000_000 + (i as u32) * 7919);
        let raw = if i < names.len() {
            names[i].to_string()
        } else {
            format!("{} {i}", NAMES[i % NAMES.len()])
        };
        let clean = crate::boleto_files::clean_name(&raw);
        let group = format!("{:06}", 4000 + i);
        let boleto = |k: u64| SbBoleto::new(due, 48_750 + (i as i64) * 100, 10_000 * i as u64 + k);
        let situacao = if i % 9 == 8 { "INADIMPLENTE" } else { "Em dia" };
        rows.push([
            format!("{group}/0001"),
            cpf.formatted(),
            raw,
            situacao.to_string(),
        ]);
        let quotas = match i % 11 {
            5 => continue, // not a client of the portal
            7 => vec![SbQuota {
                group,
                quota: "0001".into(),
                name: clean,
                boletos: vec![],
            }],
            3 => vec![
                SbQuota {
                    group: group.clone(),
                    quota: "0001".into(),
                    name: clean.clone(),
                    boletos: vec![boleto(1)],
                },
                SbQuota {
                    group,
                    quota: "0002".into(),
                    name: clean,
                    boletos: vec![boleto(2)],
                },
            ],
            _ => vec![SbQuota {
                group,
                quota: "0001".into(),
                name: clean,
                boletos: vec![boleto(0)],
            }],
        };
        canopus.set_client(cpf.digits(), quotas);
    }
    rows
}

/// Writes a consultant spreadsheet like the real one: a title block, the header on row 12.
pub fn write_sheet(
    path: &std::path::Path,
    consultant: &str,
    sales_point: &str,
    rows: &[[String; 4]],
) -> anyhow::Result<()> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "PLANILHA GERAL - CONSÓRCIO CANOPUS")?;
    sheet.write_string(2, 0, format!("Consultor: {consultant}"))?;
    for (i, h) in ["G/C", "CPF", "Concorciado", "SITUAÇÃO", "P.V", "Valor"]
        .iter()
        .enumerate()
    {
        sheet.write_string(11, i as u16, *h)?;
    }
    for (n, row) in rows.iter().enumerate() {
        let r = 12 + n as u32;
        sheet.write_string(r, 0, &row[0])?;
        // Spreadsheets keep CPFs as numbers: the leading zero is lost.
        let digits: String = row[1].chars().filter(char::is_ascii_digit).collect();
        sheet.write_number(r, 1, digits.parse::<f64>().unwrap_or(0.0))?;
        sheet.write_string(r, 2, &row[2])?;
        sheet.write_string(r, 3, &row[3])?;
        sheet.write_string(r, 4, sales_point)?;
        sheet.write_number(r, 5, 487.5)?;
    }
    book.save(path)?;
    Ok(())
}

/// Sample ERP changes for the CRM outbox (JSON lines): clients, products, sales that refer to
/// them by ERP id, an activity, a later change that supersedes an earlier one, and a client the
/// CRM refuses (no name) so that a failure shows.
pub fn erp_changes(n: usize) -> String {
    let mut out = String::new();
    let mut line = |v: serde_json::Value| {
        out.push_str(&v.to_string());
        out.push('\n');
    };
    for i in 0..n {
        let name = NAMES[i % NAMES.len()];
        line(
            serde_json::json!({"entity": "clientes", "record_id": format!("C{i}"), "action": "upsert",
            "payload": {"nome": name, "cpf_cnpj": Cpf::from_base(400_000_000 + i as u32 * 7919).formatted()}}),
        );
    }
    for p in 0..3 {
        line(
            serde_json::json!({"entity": "produtos", "record_id": format!("P{p}"), "action": "upsert",
            "payload": {"nome": format!("NIO FIBRA {}MB", 300 + p * 200), "valor_venda": "99.90"}}),
        );
    }
    for i in 0..n {
        line(
            serde_json::json!({"entity": "vendas", "record_id": format!("V{i}"), "action": "create",
            "payload": {"cliente_id": format!("C{i}"), "data": "2025-11-10",
                        "produtos": [{"produto": {"id": format!("P{}", i % 3), "quantidade": "1", "valor_venda": "99.90"}}]}}),
        );
    }
    line(
        serde_json::json!({"entity": "atividades", "record_id": "A1", "action": "create",
        "payload": {"descricao": "Ligar para confirmar a instalação"}}),
    );
    line(
        serde_json::json!({"entity": "clientes", "record_id": "C0", "action": "upsert",
        "payload": {"nome": "MARIA DA SILVA SOUZA", "cpf_cnpj": Cpf::from_base(400_000_000).formatted()}}),
    );
    line(
        serde_json::json!({"entity": "clientes", "record_id": "SEM-NOME", "action": "create",
        "payload": {"email": "sem.nome@example.com"}}),
    );
    out
}

/// Sample subscriptions (JSON lines for `import subscriptions`) around `now`: some expiring in
/// 1 to 3 days, some overdue, some renewing at Stripe today (the sandbox's Stripe gets their new
/// period), one `past_due` at Stripe, one set to cancel at period end, old sessions and a stale
/// pending payment.
pub fn subscriptions(
    stripe: &super::stripe::StripeState,
    now: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> String {
    use chrono::Duration;
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut out = String::new();
    let mut line = |v: serde_json::Value| {
        out.push_str(&v.to_string());
        out.push('\n');
    };
    line(serde_json::json!({"type": "plan", "id": "basico", "name": "Básico", "price": 2990}));
    line(serde_json::json!({"type": "plan", "id": "pro", "name": "Pro", "price": "R$ 49,90"}));
    for i in 0..n {
        let user = format!("u{i}");
        line(
            serde_json::json!({"type": "user", "id": user, "name": NAMES[i % NAMES.len()],
            "email": format!("cliente{i}@example.com"), "plan": if i % 2 == 0 { "pro" } else { "basico" }}),
        );
        // Spread the period ends: expiring soon, overdue, ending later today, far away.
        let end = match i % 6 {
            0 => now + Duration::hours(30),
            1 => now + Duration::hours(60),
            2 => now - Duration::hours(5),
            3 | 4 => now + Duration::seconds(60),
            _ => now + Duration::days(20),
        };
        let start = end - Duration::days(30);
        let sub = format!("s{i}");
        let gateway_id = format!("sub_Demo{i:04}");
        line(
            serde_json::json!({"type": "subscription", "id": sub, "user": user,
            "plan": if i % 2 == 0 { "pro" } else { "basico" }, "status": "active",
            "current_period_start": iso(start), "current_period_end": iso(end),
            "cancel_at_period_end": i == 8, "gateway": "stripe", "gateway_subscription_id": gateway_id}),
        );
        let status = if i % 6 == 4 { "past_due" } else { "active" };
        stripe.set(
            &gateway_id,
            status,
            end.timestamp(),
            (end + Duration::days(30)).timestamp(),
        );
        line(
            serde_json::json!({"type": "session", "id": format!("sess{i}"), "user": user,
            "expires_at": iso(now - Duration::days(if i % 3 == 0 { 45 } else { 2 }))}),
        );
    }
    line(
        serde_json::json!({"type": "payment", "id": "pag-velho", "user": "u0", "amount": 4990,
        "status": "pending", "created_at": iso(now - Duration::days(10))}),
    );
    line(
        serde_json::json!({"type": "payment", "id": "pag-novo", "user": "u1", "amount": 2990,
        "status": "pending", "created_at": iso(now - Duration::days(1))}),
    );
    out
}
