//! `crm-jobs export invoices`: what the CRM needs back, as CSV or JSON, on stdout or into a
//! file written atomically.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use super::Ctx;
use crate::exit::Code;

/// What to export.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every expected invoice with what Nio answered and the tracking of its attempts.
    Invoices(Args),
    /// The outcome of every client (and quota) per month, with the saved file.
    Boletos(BoletoArgs),
    /// The CRM outbox: every item with its status, attempts, CRM id and last error, and the
    /// failed item it waits for, if any.
    Queue(QueueArgs),
}

/// Arguments of `export queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Only items in this status (`pending`, `processing`, `done`, `failed`, `superseded`).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// CSV: leave cells that begin with `=`, `+`, `-`, `@`, a tab or a carriage return as they
    /// are, for a program that reads the file (by default they get a leading `'`, so that a
    /// spreadsheet shows them instead of running them as formulas).
    #[arg(long)]
    pub raw_cells: bool,
}

/// Arguments of `export boletos`.
#[derive(Debug, clap::Args)]
pub struct BoletoArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Only this year.
    #[arg(long, value_name = "YYYY")]
    pub ano: Option<i32>,
    /// Only this month (1 to 12).
    #[arg(long, value_name = "MM", value_parser = clap::value_parser!(u32).range(1..=12))]
    pub mes: Option<u32>,
    /// Only this sales point.
    #[arg(long = "ponto-venda", value_name = "CODE")]
    pub ponto_venda: Option<String>,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// CSV: leave cells that begin with `=`, `+`, `-`, `@`, a tab or a carriage return as they
    /// are, for a program that reads the file (by default they get a leading `'`, so that a
    /// spreadsheet shows them instead of running them as formulas).
    #[arg(long)]
    pub raw_cells: bool,
}

/// Arguments of `export invoices`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Only this safra.
    #[arg(long, value_name = "YYYY-MM")]
    pub safra: Option<String>,
    /// Only this contract.
    #[arg(long, value_name = "NUMBER")]
    pub contract: Option<String>,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// CSV: leave cells that begin with `=`, `+`, `-`, `@`, a tab or a carriage return as they
    /// are, for a program that reads the file (by default they get a leading `'`, so that a
    /// spreadsheet shows them instead of running them as formulas).
    #[arg(long)]
    pub raw_cells: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Code> {
    let store = ctx.open_store()?;
    match command {
        Command::Invoices(args) => {
            let rows = store.export_invoices(args.safra.as_deref(), args.contract.as_deref())?;
            write(
                ctx,
                &rows,
                args.format,
                args.out.as_deref(),
                INVOICE_HEADER,
                "invoice(s)",
                args.raw_cells,
            )
        }
        Command::Boletos(args) => {
            let point = args
                .ponto_venda
                .as_deref()
                .map(|p| super::credentials::sales_point_code(p).unwrap_or_else(|| p.to_string()));
            let rows = store.export_boletos(args.ano, args.mes, point.as_deref())?;
            write(
                ctx,
                &rows,
                args.format,
                args.out.as_deref(),
                BOLETO_HEADER,
                "boleto row(s)",
                args.raw_cells,
            )
        }
        Command::Queue(args) => {
            let rows = store.export_queue(args.status.as_deref())?;
            write(
                ctx,
                &rows,
                args.format,
                args.out.as_deref(),
                QUEUE_HEADER,
                "queue item(s)",
                args.raw_cells,
            )
        }
    }
}

fn write<T: serde::Serialize>(
    ctx: &Ctx,
    rows: &[T],
    format: Format,
    out: Option<&std::path::Path>,
    empty_header: &[&str],
    what: &str,
    raw_cells: bool,
) -> Result<Code> {
    let format = if ctx.global.json {
        Format::Json
    } else {
        format
    };
    let bytes = match format {
        Format::Json => {
            let mut b = serde_json::to_vec_pretty(rows)?;
            b.push(b'\n');
            b
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            for r in rows {
                w.serialize(r)?;
            }
            if rows.is_empty() {
                w.write_record(empty_header)?;
            }
            let bytes = w.into_inner().context("writing CSV")?;
            if raw_cells {
                bytes
            } else {
                neutralize_formulas(&bytes)?
            }
        }
    };
    match out {
        Some(path) => {
            crate::files::write_output(path, &bytes)?;
            ctx.printer.say(&format!(
                "exported {} {what} to `{}`",
                rows.len(),
                path.display()
            ));
        }
        None => crate::output::stdout(&bytes),
    }
    Ok(Code::Success)
}

/// A cell a spreadsheet would run as a formula (OWASP's CSV injection): one that begins with
/// `=`, `+`, `-`, `@`, a tab or a carriage return.
fn is_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// The CSV `bytes` with a `'` before every cell (but the header's) that a spreadsheet would run
/// as a formula: a customer named `=cmd|' /C calc'!A0` is shown, not run.
fn neutralize_formulas(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes);
    let mut w = csv::Writer::from_writer(Vec::with_capacity(bytes.len()));
    for (i, record) in reader.records().enumerate() {
        let record = record?;
        if i == 0 {
            w.write_record(&record)?;
            continue;
        }
        w.write_record(record.iter().map(|cell| {
            if is_formula(cell) {
                format!("'{cell}")
            } else {
                cell.to_string()
            }
        }))?;
    }
    w.into_inner().context("writing CSV")
}

/// The CSV header when there is no row (serde writes it only with the first row).
const INVOICE_HEADER: &[&str] = &[
    "contract",
    "service_order",
    "cpf",
    "customer",
    "safra",
    "number",
    "due_date",
    "due_date_source",
    "amount_centavos",
    "payment_status",
    "pix_code",
    "barcode",
    "pdf_path",
    "pdf_sha256",
    "match_outcome",
    "match_detail",
    "fetch_status",
    "fetch_origin",
    "attempts",
    "failed_attempts",
    "last_attempt_at",
    "last_duration_ms",
    "last_error",
    "nio_debt_id",
    "nio_invoice_id",
    "expected_amount_centavos",
    "paid_detected_at",
    "pdf_status",
    "pdf_attempts",
    "pdf_failed_attempts",
    "pdf_error",
];

/// The boleto CSV header when there is no row.
const BOLETO_HEADER: &[&str] = &[
    "sales_point",
    "consultant",
    "cpf",
    "client",
    "year",
    "month",
    "quota",
    "outcome",
    "due_date",
    "value_centavos",
    "linha",
    "pdf_path",
    "pdf_sha256",
    "error",
    "attempts",
    "attempted_at",
];

/// The queue CSV header when there is no row.
const QUEUE_HEADER: &[&str] = &[
    "id",
    "entity",
    "record_id",
    "action",
    "status",
    "priority",
    "attempts",
    "external_id",
    "unknown_outcome",
    "waiting_for",
    "due_at",
    "last_status",
    "last_error",
    "idempotency_key",
    "created_at",
    "finished_at",
    "blocked_by_item",
    "blocked_by_error",
];

#[cfg(test)]
mod tests {
    use super::neutralize_formulas;

    #[test]
    fn cells_a_spreadsheet_would_run_get_a_quote() {
        let csv = "name,amount\n=cmd|' /C calc'!A0,1\n+SUM(1+1),-2+3\n@SUM(A1),\"\tx\"\nANA,12\n";
        let out = String::from_utf8(neutralize_formulas(csv.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            "name,amount\n'=cmd|' /C calc'!A0,1\n'+SUM(1+1),'-2+3\n'@SUM(A1),'\tx\nANA,12\n"
        );
    }
}
