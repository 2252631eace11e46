//! `crm-jobs import contracts|invoices FILE.csv`: operator spreadsheets into the store. Columns
//! are found by name (case and spaces ignored; `,` or `;` separated; a UTF-8 BOM is fine); a
//! column the import does not use is named in its summary, never dropped silently. A bad row is
//! reported with file, physical line and reason and imports nothing; the other rows import.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{Datelike, Days, NaiveDate};

use super::Ctx;
use crate::clock;
use crate::domain::cpf::Cpf;
use crate::domain::{due_dates, money};
use crate::exit::Code;
use crate::store::{ContractImport, ContractRow, ExpectedInvoice};

/// What to import.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Contracts: `contrato,cpf,nome,data_instalacao` (+ optional `ordem_servico` or `os`,
    /// `safra`, `valor`: the expected amount of each invoice). Creates each contract's ten
    /// expected invoices.
    Contracts {
        /// The CSV file.
        file: PathBuf,
        /// Also write every rejected row, with its place and reason, to this CSV file.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// Due dates from the operator's spreadsheet: `contrato,numero,vencimento` (+ optional
    /// `valor`). They win over the computed ones.
    Invoices {
        /// The CSV file.
        file: PathBuf,
        /// Also write every rejected row, with its place and reason, to this CSV file.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// A consultant's spreadsheet (.xlsx): the header row and columns are found by name (`CPF`,
    /// `Concorciado`/`Cliente`/`Nome`, `G/C`, `SITUAÇÃO`, `P.V`, `Valor`). Sales points and
    /// consultants are created on first sight.
    Clients {
        /// The .xlsx file.
        file: PathBuf,
        /// The consultant the clients belong to (their boletos go to a folder of this name).
        #[arg(long, value_name = "NAME")]
        consultor: String,
        /// Sales point of rows without a `P.V` column or value.
        #[arg(long = "ponto-venda", value_name = "CODE")]
        ponto_venda: Option<String>,
        /// Also write every rejected row, with its place and reason, to this CSV file.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// Users, plans, subscriptions, sessions and payments: JSON lines with a `type` (`plan`,
    /// `user`, `subscription`, `session`, `payment`) and the host's `id`; upserted by that id.
    /// Or the app's MongoDB data as `mongoexport` writes it (Extended JSON), one collection per
    /// file with `--collection`.
    Subscriptions {
        /// The JSON-lines file (or a `mongoexport --jsonArray` array).
        file: PathBuf,
        /// Every document of the file is of this collection (a `mongoexport --collection`
        /// file); a `type` field is then the app's own, not a record type.
        #[arg(long, value_enum, value_name = "NAME")]
        collection: Option<Collection>,
    },
}

/// A collection of the subscription app's MongoDB database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Collection {
    Plans,
    Users,
    Subscriptions,
    Sessions,
    Payments,
}

impl Collection {
    /// The record type of its documents.
    fn record_type(self) -> &'static str {
        match self {
            Collection::Plans => "plan",
            Collection::Users => "user",
            Collection::Subscriptions => "subscription",
            Collection::Sessions => "session",
            Collection::Payments => "payment",
        }
    }
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Code> {
    match command {
        Command::Contracts { file, rejects } => contracts(ctx, &file, rejects.as_deref()),
        Command::Invoices { file, rejects } => invoices(ctx, &file, rejects.as_deref()),
        Command::Clients {
            file,
            consultor,
            ponto_venda,
            rejects,
        } => clients(
            ctx,
            &file,
            &consultor,
            ponto_venda.as_deref(),
            rejects.as_deref(),
        ),
        Command::Subscriptions { file, collection } => subscriptions(ctx, &file, collection),
    }
}

/// A CSV file read into named columns.
struct Sheet {
    name: String,
    columns: HashMap<String, usize>,
    /// Rows with their physical line in the file (a row spanning lines: its first).
    rows: Vec<(u64, Vec<String>)>,
    /// Columns of the file that the import does not use, as the header names them.
    ignored: Vec<String>,
}

/// Other names of a column: (synonym, the column's name).
const SYNONYMS: &[(&str, &str)] = &[("os", "ordem_servico")];

/// Physical line numbers of byte offsets, counted forward once: `\r\n`, `\n` and a lone `\r`
/// each end a line, as spreadsheets and editors show them.
struct LineCounter<'a> {
    text: &'a [u8],
    pos: usize,
    line: u64,
}

impl LineCounter<'_> {
    /// The line of the first byte at or after `offset` that does not end a line: where a
    /// record that the CSV reader placed at `offset` (before the end of the previous line and
    /// any blank lines) really starts. Offsets must not go backwards.
    fn record_line(&mut self, offset: usize) -> u64 {
        let mut start = offset.max(self.pos);
        while start < self.text.len() && matches!(self.text[start], b'\r' | b'\n') {
            start += 1;
        }
        while self.pos < start {
            match self.text[self.pos] {
                b'\n' => self.line += 1,
                b'\r' if self.text.get(self.pos + 1) != Some(&b'\n') => self.line += 1,
                _ => {}
            }
            self.pos += 1;
        }
        self.line
    }
}

impl Sheet {
    /// Reads `path`; `required` columns must be there, `optional` ones may; any other column
    /// is listed in `ignored`.
    fn read(path: &Path, required: &[&str], optional: &[&str]) -> Result<Sheet> {
        let name = path.display().to_string();
        let bytes = read_bounded(path, &name)?;
        let text = String::from_utf8(bytes).with_context(|| {
            format!("`{name}` is not UTF-8 text: save the spreadsheet as CSV UTF-8")
        })?;
        let text = text.trim_start_matches('\u{feff}');
        let header_line = text.lines().next().unwrap_or_default();
        let delimiter = if header_line.contains(';') && !header_line.contains(',') {
            b';'
        } else {
            b','
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .with_context(|| format!("cannot read the header row of `{name}`"))?
            .clone();
        // A column the import reads may appear once: which of two `valor` columns holds the
        // amount is not for the import to guess (issue 15). A second column of a name the
        // import does not read is harmless, and named among the ignored.
        let reads = |key: &str| {
            required.contains(&key)
                || optional.contains(&key)
                || SYNONYMS
                    .iter()
                    .any(|(s, c)| *s == key && (required.contains(c) || optional.contains(c)))
        };
        let mut columns: HashMap<String, usize> = HashMap::new();
        let mut repeated = Vec::new();
        for (i, h) in headers.iter().enumerate() {
            let key = h.trim().to_lowercase();
            if key.is_empty() {
                continue;
            }
            match columns.entry(key) {
                std::collections::hash_map::Entry::Occupied(first) if reads(first.key()) => {
                    let j = *first.get();
                    bail!(
                        "`{name}`: the header has the column `{}` twice, column {} (`{}`) and column {} (`{}`): keep one and import again; nothing was imported",
                        first.key(),
                        j + 1,
                        headers[j].trim(),
                        i + 1,
                        h.trim()
                    );
                }
                std::collections::hash_map::Entry::Occupied(_) => repeated.push(i),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        for (synonym, column) in SYNONYMS {
            if !columns.contains_key(*column)
                && let Some(&i) = columns.get(*synonym)
            {
                columns.insert(column.to_string(), i);
            }
        }
        if headers.iter().all(|h| h.trim().is_empty()) {
            bail!(
                "`{name}` is empty: expected a header row with the columns {} and one row per line",
                required.join(", ")
            );
        }
        for r in required {
            if !columns.contains_key(*r) {
                let found: Vec<&str> = headers.iter().collect();
                bail!(
                    "`{name}` has no `{r}` column (its header row is: {}); expected columns: {}",
                    found.join(", "),
                    required.join(", ")
                );
            }
        }
        // The reader's own line numbers fall one short after each `\r\n` row; lines are
        // counted here from the byte where each record starts.
        let mut lines = LineCounter {
            text: text.as_bytes(),
            pos: 0,
            line: 1,
        };
        let mut used_unnamed = vec![false; headers.len()];
        let mut rows = Vec::new();
        for rec in reader.records() {
            let rec = rec.with_context(|| format!("`{name}` is not valid CSV"))?;
            let line = rec
                .position()
                .map_or(0, |p| lines.record_line(p.byte() as usize));
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            for (i, f) in rec.iter().enumerate() {
                if !f.trim().is_empty() && headers.get(i).is_some_and(|h| h.trim().is_empty()) {
                    used_unnamed[i] = true;
                }
            }
            // A NUL is no text; a field over 64 kB is no value (most often a quote left open
            // that swallowed the rows after it).
            if let Some(why) = rec.iter().find_map(|f| {
                if f.contains('\0') {
                    Some("a NUL character in a field".to_string())
                } else if f.len() > MAX_FIELD {
                    Some(format!(
                        "a field of {} kB, more than {} kB (a quote opened on this line and never closed swallows the rows after it)",
                        f.len() / 1024,
                        MAX_FIELD / 1024
                    ))
                } else {
                    None
                }
            }) {
                rows.push((line, vec![format!("\u{0}{why}")]));
                continue;
            }
            if rec.len() > headers.len() {
                rows.push((
                    line,
                    vec![format!(
                        "\u{0}{} fields but the header has {}",
                        rec.len(),
                        headers.len()
                    )],
                ));
                continue;
            }
            rows.push((line, rec.iter().map(|f| f.trim().to_string()).collect()));
        }
        let known = |h: &str| {
            let key = h.trim().to_lowercase();
            required.contains(&key.as_str())
                || optional.contains(&key.as_str())
                || SYNONYMS
                    .iter()
                    .any(|(s, c)| *s == key && optional.contains(c))
        };
        let ignored = headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                if h.trim().is_empty() {
                    used_unnamed[i].then(|| format!("column {} (no name)", i + 1))
                } else if repeated.contains(&i) {
                    Some(format!("{} (repeated)", h.trim()))
                } else if !known(h) {
                    Some(h.trim().to_string())
                } else {
                    None
                }
            })
            .collect();
        Ok(Sheet {
            name,
            columns,
            rows,
            ignored,
        })
    }

    /// `; ignored column(s): a, b` for the summary line, or nothing.
    fn ignored_note(&self) -> String {
        if self.ignored.is_empty() {
            String::new()
        } else {
            format!("; ignored column(s): {}", self.ignored.join(", "))
        }
    }

    /// An optional amount column: `None` when empty; never negative.
    fn amount(&self, row: &[String], col: &str) -> std::result::Result<Option<i64>, String> {
        self.get(row, col)
            .map(|v| money::parse_amount(v).map_err(|e| format!("`{col}`: {e}")))
            .transpose()
    }

    fn get<'a>(&self, row: &'a [String], col: &str) -> Option<&'a str> {
        self.columns
            .get(col)
            .and_then(|&i| row.get(i))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A malformed-row marker left by `read`, if any.
    fn malformed(row: &[String]) -> Option<String> {
        row.first()
            .and_then(|f| f.strip_prefix('\u{0}'))
            .map(|m| format!("the row has {m}"))
    }
}

// The longest line a CSV import reads (a file of one endless line, `/dev/zero`, stops here) is
// that of JSON lines (`crate::files::BoundedLines`), 1 MB.
use crate::files::MAX_LINE;
/// The longest field a CSV import takes.
const MAX_FIELD: usize = 64 * 1024;

/// Reads a CSV file whole, refusing a line longer than [`MAX_LINE`] as soon as it is met.
fn read_bounded(path: &Path, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read `{name}`"))?;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut line, mut line_len) = (1u64, 0usize);
    loop {
        let n = file
            .read(&mut chunk)
            .with_context(|| format!("cannot read `{name}`"))?;
        if n == 0 {
            return Ok(out);
        }
        for &b in &chunk[..n] {
            if b == b'\n' {
                line += 1;
                line_len = 0;
            } else {
                line_len += 1;
                if line_len > MAX_LINE {
                    bail!(
                        "`{name}`: line {line} is longer than {} MB: it is not a CSV file of rows; nothing was imported",
                        MAX_LINE / (1024 * 1024)
                    );
                }
            }
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The context of an import that failed after it began writing: its rows were written in one
/// transaction, rolled back.
fn nothing_imported(file: &str) -> String {
    format!("nothing of `{file}` was imported (the store is as it was)")
}

/// A business date of an import, `YYYY-MM-DD` or `DD/MM/YYYY`, from 2000 to 2100 (an
/// installation on `9999-12-31` once gave due dates in the year 10000). `Err` says why not, to
/// follow the column and its text.
fn parse_date(text: &str) -> std::result::Result<NaiveDate, &'static str> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(text, "%d/%m/%Y"))
        .map_err(|_| "is not a date (expected YYYY-MM-DD or DD/MM/YYYY)")?;
    if !(2000..=2100).contains(&date.year()) {
        return Err("is outside the years 2000 to 2100");
    }
    Ok(date)
}

/// How many rejected rows a file prints; the rest are counted in one line (and all of them
/// are in `--rejects FILE` when asked).
const SHOWN_REJECTS: usize = 20;

/// The good and bad rows of one file.
struct Report {
    ok: usize,
    bad: usize,
    /// `--rejects FILE`: every rejected row with its place and reason.
    rejects: Option<(PathBuf, csv::Writer<std::fs::File>)>,
    /// The first failure to write the rejects file, reported at the end.
    rejects_error: Option<String>,
}

impl Report {
    fn new(rejects: Option<&Path>) -> Result<Report> {
        let rejects = match rejects {
            Some(path) => {
                let w = csv::WriterBuilder::new()
                    .flexible(true)
                    .from_path(path)
                    .with_context(|| {
                        format!("cannot create `--rejects` file `{}`", path.display())
                    })?;
                Some((path.to_path_buf(), w))
            }
            None => None,
        };
        let mut report = Report {
            ok: 0,
            bad: 0,
            rejects,
            rejects_error: None,
        };
        report.write_reject(&["place", "reason", "row..."]);
        Ok(report)
    }

    /// A bad row of a CSV file, at its physical line.
    fn bad(&mut self, sheet: &Sheet, line: u64, reason: &str) {
        let fields = sheet
            .rows
            .binary_search_by_key(&line, |(l, _)| *l)
            .map(|i| sheet.rows[i].1.clone())
            .unwrap_or_default();
        self.bad_at(&format!("{}:{line}", sheet.name), reason, &fields);
    }

    /// A bad row at `place` (`FILE:LINE`, or a sheet's row), with the row's own fields.
    fn bad_at(&mut self, place: &str, reason: &str, fields: &[String]) {
        self.bad += 1;
        if self.bad <= SHOWN_REJECTS {
            tracing::warn!("{place}: {reason}; row skipped");
        }
        let mut record = vec![place.to_string(), reason.to_string()];
        record.extend(fields.iter().cloned());
        self.write_reject(&record);
    }

    fn write_reject<S: AsRef<[u8]>>(&mut self, record: &[S]) {
        if let Some((path, w)) = &mut self.rejects
            && let Err(e) = w.write_record(record)
            && self.rejects_error.is_none()
        {
            self.rejects_error = Some(format!(
                "cannot write `--rejects` file `{}`: {e}",
                path.display()
            ));
        }
    }

    /// Says how many rejected rows were not printed, and finishes the rejects file.
    fn finish(&mut self, file: &str) -> Result<()> {
        if self.bad > SHOWN_REJECTS {
            tracing::warn!(
                "{file}: {} more row(s) skipped, not shown{}",
                self.bad - SHOWN_REJECTS,
                match &self.rejects {
                    Some((path, _)) => format!(" (all of them are in `{}`)", path.display()),
                    None => " (`--rejects FILE` lists them all)".to_string(),
                }
            );
        }
        if let Some((path, w)) = &mut self.rejects
            && let Err(e) = w.flush()
            && self.rejects_error.is_none()
        {
            self.rejects_error = Some(format!(
                "cannot write `--rejects` file `{}`: {e}",
                path.display()
            ));
        }
        match self.rejects_error.take() {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(()),
        }
    }

    fn code(&self) -> Code {
        if self.bad > 0 {
            Code::Partial
        } else {
            Code::Success
        }
    }
}

/// Contracts written to the store together (their 500 expected invoices in one statement).
const CONTRACTS_PER_BATCH: usize = 50;

fn contracts(ctx: &Ctx, file: &Path, rejects: Option<&Path>) -> Result<Code> {
    let sheet = Sheet::read(
        file,
        &["contrato", "cpf", "nome", "data_instalacao"],
        &["ordem_servico", "safra", "valor"],
    )?;
    let mut store = ctx.open_store()?;
    let now = clock::to_store(ctx.clock.now());
    // Every good row in one transaction: all of them are imported, or none.
    let (report, new) = store
        .in_one_transaction(|store| {
            let mut report = Report::new(rejects)?;
            let mut new = 0;
            // Good rows go to the store by batches (fewer, larger statements).
            let mut batch = Vec::with_capacity(CONTRACTS_PER_BATCH);
            for (line, row) in &sheet.rows {
                if let Some(m) = Sheet::malformed(row) {
                    report.bad(&sheet, *line, &m);
                    continue;
                }
                let Some(contract) = sheet.get(row, "contrato") else {
                    report.bad(&sheet, *line, "`contrato` is empty");
                    continue;
                };
                let cpf = match Cpf::parse(sheet.get(row, "cpf").unwrap_or_default()) {
                    Ok(c) => c,
                    Err(e) => {
                        report.bad(&sheet, *line, &format!("invalid CPF: {e}"));
                        continue;
                    }
                };
                let Some(name) = sheet.get(row, "nome") else {
                    report.bad(&sheet, *line, "`nome` is empty");
                    continue;
                };
                let raw_date = sheet.get(row, "data_instalacao").unwrap_or_default();
                let installed = match parse_date(raw_date) {
                    Ok(d) => d,
                    Err(why) => {
                        report.bad(
                            &sheet,
                            *line,
                            &format!("`data_instalacao` = `{raw_date}` {why}"),
                        );
                        continue;
                    }
                };
                let safra = match sheet.get(row, "safra") {
                    Some(s)
                        if NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").is_ok() =>
                    {
                        Cow::Borrowed(s)
                    }
                    Some(s) => {
                        report.bad(
                            &sheet,
                            *line,
                            &format!("`safra` = `{s}` is not a month (expected YYYY-MM)"),
                        );
                        continue;
                    }
                    None => Cow::Owned(installed.format("%Y-%m").to_string()),
                };
                let amount = match sheet.amount(row, "valor") {
                    Ok(a) => a,
                    Err(m) => {
                        report.bad(&sheet, *line, &m);
                        continue;
                    }
                };
                let expected: Vec<ExpectedInvoice> = (1..=due_dates::EXPECTED_INVOICES)
                    .map(|n| {
                        let due = due_dates::due_date(installed, n);
                        ExpectedInvoice {
                            number: n,
                            due_date: due,
                            available_from: due_dates::available_from(installed, n, due),
                        }
                    })
                    .collect();
                batch.push(ContractRow {
                    contract: ContractImport {
                        contract_number: contract,
                        service_order: sheet.get(row, "ordem_servico"),
                        cpf: Cow::Owned(cpf.digits().to_string()),
                        customer_name: name,
                        installed_on: installed,
                        safra,
                        expected_amount_centavos: amount,
                    },
                    expected,
                });
                report.ok += 1;
                if batch.len() == CONTRACTS_PER_BATCH {
                    new += store.upsert_contracts(&batch, &now)?;
                    batch.clear();
                }
            }
            new += store.upsert_contracts(&batch, &now)?;
            Ok((report, new))
        })
        .with_context(|| nothing_imported(&sheet.name))?;
    let mut report = report;
    report.finish(&sheet.name)?;
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::json!({
            "file": sheet.name, "imported": report.ok, "new": new,
            "updated": report.ok - new, "skipped": report.bad,
            "ignored_columns": sheet.ignored,
        }));
    }
    ctx.printer.say(&format!(
        "imported {} contract(s) from `{}` ({new} new, {} updated, {} expected invoices each); {} row(s) skipped{}",
        report.ok,
        sheet.name,
        report.ok - new,
        due_dates::EXPECTED_INVOICES,
        report.bad,
        sheet.ignored_note()
    ));
    Ok(report.code())
}

fn invoices(ctx: &Ctx, file: &Path, rejects: Option<&Path>) -> Result<Code> {
    let sheet = Sheet::read(file, &["contrato", "numero", "vencimento"], &["valor"])?;
    let mut store = ctx.open_store()?;
    let report = store
        .in_one_transaction(|store| {
    let mut report = Report::new(rejects)?;
    for (line, row) in &sheet.rows {
        if let Some(m) = Sheet::malformed(row) {
            report.bad(&sheet, *line, &m);
            continue;
        }
        let contract = sheet.get(row, "contrato").unwrap_or_default();
        let Some(installed) = store.contract_installed_on(contract)? else {
            report.bad(&sheet, *line, &format!("contract `{contract}` is unknown: import it first with `crm-jobs import contracts`"));
            continue;
        };
        let raw_n = sheet.get(row, "numero").unwrap_or_default();
        let Some(number) = raw_n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=due_dates::EXPECTED_INVOICES).contains(n))
        else {
            report.bad(
                &sheet,
                *line,
                &format!("`numero` = `{raw_n}` is not an invoice number from 1 to 10"),
            );
            continue;
        };
        let raw_due = sheet.get(row, "vencimento").unwrap_or_default();
        let due = match parse_date(raw_due) {
            Ok(d) => d,
            Err(why) => {
                report.bad(&sheet, *line, &format!("`vencimento` = `{raw_due}` {why}"));
                continue;
            }
        };
        let amount = match sheet.amount(row, "valor") {
            Ok(a) => a,
            Err(m) => {
                report.bad(&sheet, *line, &m);
                continue;
            }
        };
        let available = if number == 1 {
            installed + Days::new(3)
        } else {
            due - Days::new(3)
        };
        store.import_due_date(contract, number, due, available, amount)?;
        report.ok += 1;
    }
    Ok(report)
        })
        .with_context(|| nothing_imported(&sheet.name))?;
    let mut report = report;
    report.finish(&sheet.name)?;
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::json!({
            "file": sheet.name, "imported": report.ok, "skipped": report.bad,
            "ignored_columns": sheet.ignored,
        }));
    }
    ctx.printer.say(&format!(
        "imported {} due date(s) from `{}`; {} row(s) skipped{}",
        report.ok,
        sheet.name,
        report.bad,
        sheet.ignored_note()
    ));
    Ok(report.code())
}

fn clients(
    ctx: &Ctx,
    file: &Path,
    consultant: &str,
    default_point: Option<&str>,
    rejects: Option<&Path>,
) -> Result<Code> {
    let consultant = consultant.trim().to_uppercase();
    if consultant.is_empty() {
        bail!("`--consultor` is empty");
    }
    let default_point = match default_point {
        Some(p) => Some(super::credentials::sales_point_code(p).ok_or_else(|| {
            crate::exit::CodedError {
                code: Code::Usage,
                message: format!("`--ponto-venda {p}` is not a sales point code (e.g. `17.308`)"),
            }
        })?),
        None => None,
    };
    let sheet = crate::spreadsheet::read_clients(file)?;
    let mut store = ctx.open_store()?;
    let now = clock::to_store(ctx.clock.now());
    let name = file.display().to_string();
    let (ok, report, new) = store
        .in_one_transaction(|store| {
            let consultant_id = store.ensure_consultant(
                &consultant,
                &crate::boleto_files::folder_name(&consultant),
                &now,
            )?;
            let (mut ok, mut new) = (0usize, 0usize);
            let mut report = Report::new(rejects)?;
            for row in &sheet.rows {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        report.bad_at(
                            &format!("{name}: sheet `{}`, row {}", sheet.sheet_name, e.row),
                            &e.reason,
                            &[],
                        );
                        continue;
                    }
                };
                // A `P.V` that is there must be a sales point code; only an empty one takes
                // the default.
                let point = match row.sales_point.as_deref() {
                    Some(pv) => match super::credentials::sales_point_code(pv) {
                        Some(code) => Some(code),
                        None => {
                            report.bad_at(
                                &format!("{name}: sheet `{}`, row {}", sheet.sheet_name, row.row),
                                &format!(
                                    "`P.V` = `{pv}` is not a sales point code (e.g. `17.308`)"
                                ),
                                &[],
                            );
                            continue;
                        }
                    },
                    None => default_point.clone(),
                };
                let Some(point) = point else {
                    report.bad_at(
                        &format!("{name}: sheet `{}`, row {}", sheet.sheet_name, row.row),
                        "no sales point (no `P.V` value and no `--ponto-venda`)",
                        &[],
                    );
                    continue;
                };
                let point_id = store.ensure_sales_point(&point, &now)?;
                let source = format!("{name}:{}", row.row);
                let is_new = store.upsert_client(
                    &crate::store::ClientImport {
                        cpf: row.cpf.digits(),
                        name: &row.name,
                        raw_name: &row.raw_name,
                        consultant_id,
                        sales_point_id: Some(point_id),
                        quota: row.quota.as_deref(),
                        situacao: row.situacao.as_ref().map(|s| s.as_str()),
                        value_centavos: row.value_centavos,
                        source: &source,
                    },
                    &now,
                )?;
                new += usize::from(is_new);
                ok += 1;
            }
            Ok((ok, report, new))
        })
        .with_context(|| nothing_imported(&name))?;
    let mut report = report;
    report.finish(&name)?;
    let bad = report.bad;
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::json!({
            "file": name, "sheet": sheet.sheet_name, "header_row": sheet.header_row,
            "imported": ok, "new": new, "skipped": bad,
        }));
    }
    ctx.printer.say(&format!(
        "imported {ok} client(s) of {consultant} from `{name}` (sheet `{}`, header on row {}; {new} new, {} updated); {bad} row(s) skipped",
        sheet.sheet_name,
        sheet.header_row,
        ok - new
    ));
    Ok(if bad > 0 {
        Code::Partial
    } else {
        Code::Success
    })
}

fn subscriptions(ctx: &Ctx, file: &Path, collection: Option<Collection>) -> Result<Code> {
    use serde_json::Value;
    let name = file.display().to_string();
    let input = std::fs::File::open(file).with_context(|| format!("cannot read `{name}`"))?;
    let mut lines = crate::files::BoundedLines::new(std::io::BufReader::new(input));
    let refused = |e: crate::files::LineError| {
        anyhow::anyhow!(e.describe(&name, "a file of JSON lines", "imported"))
    };
    // `mongoexport --jsonArray` writes one array (maybe over many lines, maybe on one); by
    // default, and as our own format, one document per line, each at most 1 MB, read as they
    // come: an endless input (`/dev/zero`) stops there.
    let array = lines.first_byte().map_err(refused)? == Some(b'[');
    let documents: Vec<(String, std::result::Result<Value, String>)> = if array {
        let all: Vec<Value> = serde_json::from_reader(lines.into_inner())
            .with_context(|| format!("`{name}` begins with `[` but is not a JSON array"))?;
        all.into_iter()
            .enumerate()
            .map(|(i, v)| (format!(" document {}", i + 1), Ok(v)))
            .collect()
    } else {
        let mut documents = Vec::new();
        while let Some((n, line)) = lines.next_line().map_err(refused)? {
            if line.trim().is_empty() {
                continue;
            }
            documents.push((
                n.to_string(),
                serde_json::from_str(line).map_err(|e| format!("not JSON ({e})")),
            ));
        }
        documents
    };
    let mut store = ctx.open_store()?;
    let now = clock::to_store(ctx.clock.now());
    // Every good record in one transaction: all of them are imported, or none.
    let (ok, bad) = store
        .in_one_transaction(|store| {
            let (mut ok, mut bad) = (0usize, 0usize);
            for (at, document) in documents {
                let imported = document
                    .and_then(extended_json)
                    .and_then(|v| subscription_line(store, &v, collection, &now));
                // A store that ended the transaction (a full disk) would take the next
                // records one by one: stop here, nothing stands.
                if !store.in_transaction() {
                    bail!("the store ended the import's transaction at {name}:{at} (is the disk full?)");
                }
                match imported {
                    Ok(()) => ok += 1,
                    Err(reason) => {
                        bad += 1;
                        let unit = if array { "document" } else { "line" };
                        tracing::warn!("{name}:{at}: {reason}; {unit} skipped");
                    }
                }
            }
            Ok((ok, bad))
        })
        .with_context(|| nothing_imported(&name))?;
    if ctx.printer.json {
        ctx.printer
            .json_out(&serde_json::json!({"file": name, "imported": ok, "skipped": bad}));
    }
    ctx.printer.say(&format!(
        "imported {ok} record(s) from `{name}`; {bad} line(s) skipped"
    ));
    Ok(if bad > 0 {
        Code::Partial
    } else {
        Code::Success
    })
}

/// MongoDB Extended JSON (what `mongoexport` writes, relaxed or canonical) made plain: an
/// ObjectId `{"$oid": "..."}` is its hex text, a date `{"$date": ...}` an RFC 3339 instant,
/// `{"$numberInt"|"$numberLong"|"$numberDouble": "..."}` a number. `{"$numberDecimal": "..."}`
/// stays, for the amounts (reais) to read it exactly.
fn extended_json(v: serde_json::Value) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value;
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(extended_json)
            .collect::<std::result::Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) if map.len() == 1 => {
            let (key, value) = map.iter().next().expect("one entry");
            match (key.as_str(), value) {
                ("$oid", Value::String(hex)) => Ok(Value::String(hex.clone())),
                ("$date", date) => extended_date(date)
                    .map(|t| Value::String(clock::to_store(t)))
                    .ok_or_else(|| format!("`{{\"$date\": {date}}}` is not a date")),
                ("$numberInt" | "$numberLong", Value::String(n)) => n
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("`{{\"{key}\": \"{n}\"}}` is not an integer")),
                ("$numberDouble", Value::String(n)) => Ok(n
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(n.clone()), Value::Number)),
                _ => Ok(Value::Object(
                    map.into_iter()
                        .map(|(k, v)| Ok((k, extended_json(v)?)))
                        .collect::<std::result::Result<_, String>>()?,
                )),
            }
        }
        Value::Object(map) => Ok(Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, extended_json(v)?)))
                .collect::<std::result::Result<_, String>>()?,
        )),
        other => Ok(other),
    }
}

/// The instant of a `$date`: ISO 8601 text (`Z` or an offset, `+0000` too) or milliseconds since
/// 1970, as a number or `{"$numberLong": "..."}`.
fn extended_date(v: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    use serde_json::Value;
    let millis = match v {
        Value::String(text) => {
            return chrono::DateTime::parse_from_rfc3339(text)
                .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc));
        }
        Value::Number(n) => n.as_i64()?,
        Value::Object(o) => o.get("$numberLong")?.as_str()?.parse().ok()?,
        _ => return None,
    };
    chrono::DateTime::from_timestamp_millis(millis)
}

/// Reais as a decimal text (`49.90`, `4990`, `49.9`) in centavos: no fraction of a centavo.
fn decimal_centavos(key: &str, text: &str) -> std::result::Result<i64, String> {
    let (reais, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if reais.is_empty() || !digits(reais) || !digits(fraction) {
        return Err(format!(
            "`{key}` = `{text}` is not an amount in reais (e.g. `{{\"$numberDecimal\": \"49.90\"}}`)"
        ));
    }
    if fraction.bytes().skip(2).any(|b| b != b'0') {
        return Err(format!("`{key}` = `{text}` has a fraction of a centavo"));
    }
    let cents: String = fraction.chars().chain("00".chars()).take(2).collect();
    reais
        .parse::<i64>()
        .ok()
        .and_then(|r| r.checked_mul(100))
        .and_then(|r| r.checked_add(cents.parse::<i64>().ok()?))
        .ok_or_else(|| format!("`{key}` = `{text}` is too large"))
}

/// One record (a line, or a document of a collection).
fn subscription_line(
    store: &mut crate::store::Store,
    v: &serde_json::Value,
    collection: Option<Collection>,
    now: &str,
) -> std::result::Result<(), String> {
    use serde_json::Value;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    // The app's names: `_id` for the id, `user_id`, `plan_id`, `subscription_id` for the
    // references.
    let get = |k: &str| -> Option<&Value> {
        let alias = match k {
            "id" => "_id",
            "user" => "user_id",
            "plan" => "plan_id",
            "subscription" => "subscription_id",
            _ => "",
        };
        v.get(k)
            .filter(|x| !x.is_null())
            .or_else(|| v.get(alias).filter(|x| !x.is_null()))
    };
    let text = |k: &str| -> std::result::Result<String, String> {
        match get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(format!("`{k}` is missing or empty")),
        }
    };
    let opt = |k: &str| text(k).ok();
    let instant = |k: &str| -> std::result::Result<String, String> {
        match get(k) {
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(clock::to_store)
                .ok_or_else(|| format!("`{k}` is not a Unix time")),
            Some(Value::String(s)) => clock::from_store(s).map(clock::to_store).ok_or_else(|| {
                format!("`{k}` = `{s}` is not an RFC 3339 instant (e.g. `2025-11-13T12:00:00Z`)")
            }),
            _ => Err(format!("`{k}` is missing")),
        }
    };
    let centavos = |k: &str| -> std::result::Result<i64, String> {
        let value = match get(k) {
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
            Some(Value::String(s)) => money::parse_amount(s).map_err(|e| format!("`{k}`: {e}")),
            Some(Value::Object(o)) if o.len() == 1 && o.contains_key("$numberDecimal") => {
                match &o["$numberDecimal"] {
                    Value::String(d) => decimal_centavos(k, d),
                    other => Err(format!("`{k}` = `{other}` is not a decimal")),
                }
            }
            _ => Err(format!(
                "`{k}` must be centavos (an integer), a text amount like `R$ 49,90`, or reais as `{{\"$numberDecimal\": \"49.90\"}}`"
            )),
        }?;
        // A price or a payment is never negative (a plan of i64::MIN centavos once made an
        // email say "-R$ 92.233.720.368.547.758,08").
        if value < 0 {
            return Err(format!(
                "`{k}` = {value} centavos is negative: an amount is 0 or more"
            ));
        }
        Ok(value)
    };
    let flag = |k: &str| -> std::result::Result<bool, String> {
        match get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Ok(n.as_i64() == Some(1))
            }
            Some(other) => Err(format!("`{k}` = `{other}` is not true or false")),
        }
    };
    let one_of =
        |k: &str, value: String, allowed: &[&str]| -> std::result::Result<String, String> {
            if allowed.contains(&value.as_str()) {
                Ok(value)
            } else {
                Err(format!(
                    "`{k}` = `{value}` is not one of {}",
                    allowed.join(", ")
                ))
            }
        };
    let err = |e: anyhow::Error| format!("{e:#}");
    // Soft-deleted in the app: imported as deleted (the first instant stays), so that nothing
    // touches it and what names it still imports.
    let deleted = flag("flag_del")?.then_some(now);
    let kind = match collection {
        Some(c) => c.record_type().to_string(),
        None => text("type")?,
    };
    match kind.as_str() {
        "plan" => store
            .upsert_plan(
                &text("id")?,
                &text("name")?,
                centavos("price")?,
                &one_of(
                    "billing_cycle",
                    opt("billing_cycle").unwrap_or_else(|| "monthly".into()),
                    &["monthly", "quarterly", "yearly"],
                )?,
                deleted,
            )
            .map_err(err),
        "user" => {
            let email = text("email")?;
            if email.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!("`email` = `{email}` is not an email address"));
            }
            store
                .upsert_user(
                    &text("id")?,
                    &text("name")?,
                    &email,
                    opt("plan").as_deref(),
                    deleted,
                )
                .map_err(err)
        }
        "subscription" => {
            let start = instant("current_period_start")?;
            let end = instant("current_period_end")?;
            if end <= start {
                return Err("`current_period_end` is not after `current_period_start`".into());
            }
            let gateway = one_of(
                "gateway",
                opt("gateway").unwrap_or_else(|| "stripe".into()),
                &["stripe", "mercadopago", "paypal", "manual"],
            )?;
            let gateway_id = opt("gateway_subscription_id");
            if let Some(id) = &gateway_id {
                gateway_id_is_valid(&gateway, id)?;
            }
            store
                .upsert_subscription(
                    &text("id")?,
                    &text("user")?,
                    &text("plan")?,
                    &one_of(
                        "status",
                        text("status")?,
                        &["active", "inactive", "canceled", "past_due", "trialing"],
                    )?,
                    (&start, &end),
                    flag("cancel_at_period_end")?,
                    &gateway,
                    gateway_id.as_deref(),
                    // The app sent this period's warning: `renew` does not send it again.
                    flag("expiration_warning_sent")?,
                    deleted,
                )
                .map_err(err)
        }
        "session" => store
            .upsert_session(
                &text("id")?,
                &text("user")?,
                &instant("expires_at")?,
                deleted,
            )
            .map_err(err),
        "payment" => store
            .upsert_payment(
                &text("id")?,
                &text("user")?,
                opt("subscription").as_deref(),
                centavos("amount")?,
                &one_of(
                    "status",
                    text("status")?,
                    &["pending", "approved", "failed", "cancelled", "refunded"],
                )?,
                &instant("created_at")?,
                deleted,
            )
            .map_err(err),
        other => Err(format!(
            "`type` = `{other}` is not one of plan, user, subscription, session, payment"
        )),
    }
}

/// A gateway's subscription id is an id, never a path: Stripe's are `sub_` followed by letters
/// and digits; the other gateways' are letters, digits, `-` and `_`; at most 255 characters.
fn gateway_id_is_valid(gateway: &str, id: &str) -> std::result::Result<(), String> {
    let ok = id.len() <= 255
        && match gateway {
            "stripe" => id.strip_prefix("sub_").is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            }),
            _ => id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        };
    match (ok, gateway) {
        (true, _) => Ok(()),
        (false, "stripe") => Err(format!(
            "`gateway_subscription_id` = `{id}` is not a Stripe subscription id (`sub_` followed by letters and digits, e.g. `sub_1QxYzAbCdEfGh`)"
        )),
        (false, _) => Err(format!(
            "`gateway_subscription_id` = `{id}` is not a `{gateway}` subscription id (letters, digits, `-` and `_`, at most 255)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extended_json_is_made_plain() {
        let v = extended_json(json!({
            "_id": {"$oid": "65f1c0de0000000000000001"},
            "when": {"$date": "2025-11-12T10:00:00.000Z"},
            "legacy": {"$date": "2025-11-12T07:00:00.000-0300"},
            "canonical": {"$date": {"$numberLong": "1762941600000"}},
            "millis": {"$date": 1762941600000i64},
            "n": {"$numberInt": "7"},
            "big": {"$numberLong": "9000000000"},
            "x": {"$numberDouble": "1.5"},
            "price": {"$numberDecimal": "49.90"},
            "nested": [{"$oid": "65f1c0de0000000000000002"}],
        }))
        .unwrap();
        assert_eq!(v["_id"], "65f1c0de0000000000000001");
        for k in ["when", "legacy", "canonical", "millis"] {
            assert_eq!(v[k], "2025-11-12T10:00:00.000Z", "{k}");
        }
        assert_eq!(
            (v["n"].clone(), v["big"].clone()),
            (json!(7), json!(9_000_000_000i64))
        );
        assert_eq!(v["x"], json!(1.5));
        assert_eq!(
            v["price"],
            json!({"$numberDecimal": "49.90"}),
            "kept for the amounts"
        );
        assert_eq!(v["nested"][0], "65f1c0de0000000000000002");
        assert_eq!(
            extended_json(json!({"d": {"$date": "ontem"}})).unwrap_err(),
            "`{\"$date\": \"ontem\"}` is not a date"
        );
    }

    #[test]
    fn decimals_are_reais_to_the_centavo() {
        assert_eq!(decimal_centavos("price", "49.90"), Ok(4990));
        assert_eq!(decimal_centavos("price", "49.9"), Ok(4990));
        assert_eq!(decimal_centavos("price", "4990"), Ok(499_000));
        assert_eq!(decimal_centavos("price", "0.05"), Ok(5));
        assert_eq!(decimal_centavos("price", "49.900"), Ok(4990));
        assert_eq!(
            decimal_centavos("price", "49.999"),
            Err("`price` = `49.999` has a fraction of a centavo".into())
        );
        for bad in ["", "-1", "4.99E+1", "49,90", ".5"] {
            assert!(decimal_centavos("price", bad).is_err(), "{bad:?}");
        }
    }
}
