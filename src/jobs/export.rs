//! `crm-jobs export invoices`: what the CRM needs back, as CSV or JSON, on stdout or into a
//! file written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::ser::{SerializeSeq, Serializer as _};

use super::Ctx;
use crate::exit::Code;
use crate::store::QueueStatus;

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
    #[arg(long, value_name = "STATUS", value_parser = |s: &str| s.parse::<QueueStatus>())]
    pub status: Option<QueueStatus>,
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
    let store = ctx.open_store_for_reading()?;
    match command {
        Command::Invoices(args) => write(
            ctx,
            Sink::new(args.format, args.out.as_deref(), args.raw_cells),
            INVOICE_HEADER,
            "invoice(s)",
            |each| store.export_invoices(args.safra.as_deref(), args.contract.as_deref(), each),
        ),
        Command::Boletos(args) => {
            let point = args
                .ponto_venda
                .as_deref()
                .map(|p| super::credentials::sales_point_code(p).unwrap_or_else(|| p.to_string()));
            write(
                ctx,
                Sink::new(args.format, args.out.as_deref(), args.raw_cells),
                BOLETO_HEADER,
                "boleto row(s)",
                |each| store.export_boletos(args.ano, args.mes, point.as_deref(), each),
            )
        }
        Command::Queue(args) => write(
            ctx,
            Sink::new(args.format, args.out.as_deref(), args.raw_cells),
            QUEUE_HEADER,
            "queue item(s)",
            |each| store.export_queue(args.status, each),
        ),
    }
}

/// Where and how an export is written.
struct Sink<'a> {
    format: Format,
    out: Option<&'a Path>,
    raw_cells: bool,
}

impl<'a> Sink<'a> {
    fn new(format: Format, out: Option<&'a Path>, raw_cells: bool) -> Self {
        Sink {
            format,
            out,
            raw_cells,
        }
    }
}

/// Streams the rows `produce` hands over (one at a time, straight from the store) as CSV or
/// JSON into the `--out` file (atomically) or stdout: the memory an export takes does not grow
/// with its rows.
fn write<T: serde::Serialize>(
    ctx: &Ctx,
    sink: Sink,
    empty_header: &[&str],
    what: &str,
    produce: impl FnOnce(&mut dyn FnMut(T) -> Result<()>) -> Result<()>,
) -> Result<Code> {
    let format = if ctx.output.json {
        Format::Json
    } else {
        sink.format
    };
    let mut count = 0u64;
    let fill = |w: &mut dyn Write| -> Result<()> {
        match format {
            Format::Json => {
                {
                    let mut ser = serde_json::Serializer::pretty(&mut *w);
                    let mut seq = ser.serialize_seq(None)?;
                    produce(&mut |row| {
                        seq.serialize_element(&row)?;
                        count += 1;
                        Ok(())
                    })?;
                    SerializeSeq::end(seq)?;
                }
                w.write_all(b"\n")?;
            }
            Format::Csv => {
                let mut csv = CsvOut::new(w, sink.raw_cells);
                produce(&mut |row| {
                    csv.row(&row)?;
                    count += 1;
                    Ok(())
                })?;
                csv.finish(empty_header)?;
            }
        }
        Ok(())
    };
    match sink.out {
        Some(path) => {
            crate::files::write_output_with(path, fill)?;
            ctx.printer
                .say(&format!("exported {count} {what} to `{}`", path.display()));
        }
        None => {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, crate::output::StdoutSink);
            let done = fill(&mut out).and_then(|()| Ok(out.flush()?));
            // A reader gone away ends the export quietly; another failure to write stdout is
            // reported once by the entry point. Any other failure (the store's) is this one.
            if let Err(e) = done
                && !crate::output::stdout_failed()
            {
                return Err(e);
            }
        }
    }
    Ok(Code::Success)
}

/// Rows per chunk of CSV made before its cells are checked and written out.
const CSV_CHUNK_ROWS: usize = 1024;

/// CSV written in chunks of [`CSV_CHUNK_ROWS`] rows: each chunk is serialized by serde (the
/// header with the first row), then its cells a spreadsheet would run are neutralized on the
/// way out, unless raw cells were asked for.
struct CsvOut<'w> {
    out: &'w mut dyn Write,
    chunk: csv::Writer<Vec<u8>>,
    rows_in_chunk: usize,
    header_pending: bool,
    any_row: bool,
    raw_cells: bool,
}

impl<'w> CsvOut<'w> {
    fn new(out: &'w mut dyn Write, raw_cells: bool) -> Self {
        CsvOut {
            out,
            chunk: csv::Writer::from_writer(Vec::new()),
            rows_in_chunk: 0,
            header_pending: true,
            any_row: false,
            raw_cells,
        }
    }

    fn row<T: serde::Serialize>(&mut self, row: &T) -> Result<()> {
        self.chunk.serialize(row)?;
        self.any_row = true;
        self.rows_in_chunk += 1;
        if self.rows_in_chunk >= CSV_CHUNK_ROWS {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        let next = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        let bytes = std::mem::replace(&mut self.chunk, next)
            .into_inner()
            .context("writing CSV")?;
        if self.raw_cells {
            self.out.write_all(&bytes)?;
        } else {
            neutralize_formulas(&bytes, self.header_pending, &mut *self.out)?;
        }
        self.header_pending = false;
        self.rows_in_chunk = 0;
        Ok(())
    }

    fn finish(mut self, empty_header: &[&str]) -> Result<()> {
        if !self.any_row {
            self.chunk.write_record(empty_header)?;
        }
        self.drain()?;
        Ok(self.out.flush()?)
    }
}

/// A cell a spreadsheet would run as a formula (OWASP's CSV injection): one that begins with
/// `=`, `+`, `-`, `@`, a tab or a carriage return.
fn is_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// Writes the CSV `bytes` to `out` with a `'` before every cell (but the header's, when the
/// chunk begins with it) that a spreadsheet would run as a formula: a customer named
/// `=cmd|' /C calc'!A0` is shown, not run.
fn neutralize_formulas(bytes: &[u8], with_header: bool, out: &mut dyn Write) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes);
    let mut w = csv::Writer::from_writer(out);
    let mut record = csv::StringRecord::new();
    let mut first = true;
    while reader.read_record(&mut record)? {
        if std::mem::take(&mut first) && with_header {
            w.write_record(&record)?;
            continue;
        }
        for cell in &record {
            if is_formula(cell) {
                w.write_field(format!("'{cell}"))?;
            } else {
                w.write_field(cell)?;
            }
        }
        w.write_record(None::<&[u8]>)?;
    }
    w.flush()?;
    Ok(())
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
        let mut out = Vec::new();
        neutralize_formulas(csv.as_bytes(), true, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "name,amount\n'=cmd|' /C calc'!A0,1\n'+SUM(1+1),'-2+3\n'@SUM(A1),'\tx\nANA,12\n"
        );
    }
}
