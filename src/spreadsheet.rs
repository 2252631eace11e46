//! Reading a consultant's `.xlsx` spreadsheet of consórcio clients into typed rows.
//!
//! The sheets are kept by hand: the header row sits under a title block (row 12 in the known
//! sheet) and columns move, so the header row and its columns are found by their names and
//! common synonyms, never by position. A bad row becomes a [`RowError`] next to the good ones,
//! so that one typo does not stop a consultant's whole batch.

use std::path::Path;

use calamine::{Data, Reader, Xlsx, XlsxError, open_workbook};
use thiserror::Error;

use crate::boleto_files::clean_name;
use crate::domain::cpf::Cpf;

/// How many rows from the top are searched for the header row.
const HEADER_SCAN_ROWS: usize = 50;

/// What a workbook may hold before it is refused unread: its files' uncompressed size (a zip
/// bomb claims gigabytes), the cells of its sheet and the columns read of a row. A consultant's
/// sheet of a few thousand clients is far below each.
pub const MAX_UNCOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_CELLS: usize = 2_000_000;
pub const MAX_COLUMNS: u32 = 256;

/// Why a spreadsheet could not be read at all (a bad row is a [`RowError`] instead).
#[derive(Debug, Error)]
pub enum SpreadsheetError {
    /// The file is missing, unreadable or not an `.xlsx` workbook.
    #[error("cannot open `{file}`: consultant spreadsheets must be `.xlsx` workbooks")]
    Open {
        /// The path as given.
        file: String,
        /// What calamine said.
        #[source]
        source: XlsxError,
    },
    /// The workbook has no worksheet.
    #[error("`{file}` has no worksheet")]
    NoWorksheet {
        /// The path as given.
        file: String,
    },
    /// The first worksheet is there but could not be read.
    #[error("cannot read worksheet `{sheet}` of `{file}`")]
    ReadSheet {
        /// The path as given.
        file: String,
        /// The name of the first worksheet.
        sheet: String,
        /// What calamine said.
        #[source]
        source: XlsxError,
    },
    /// The workbook claims more than a consultant's sheet can hold.
    #[error("`{file}` is too large to be a consultant spreadsheet: {what}; nothing was imported")]
    TooLarge {
        /// The path as given.
        file: String,
        /// Which bound it passes.
        what: String,
    },
    /// No row in the first 50 has both a CPF column and a name column.
    #[error(
        "`{file}`: no header row with a CPF column and a name column (`Concorciado`, `Cliente` or `Nome`) in its first 50 rows"
    )]
    NoHeader {
        /// The path as given.
        file: String,
    },
}

/// The clients read from the first worksheet of a consultant's spreadsheet.
#[derive(Debug)]
pub struct Sheet {
    /// The name of the worksheet that was read.
    pub sheet_name: String,
    /// The header row, 1-based as Excel shows it.
    pub header_row: usize,
    /// One entry per client row below the header, in sheet order; blank, empty and `TOTAL`
    /// rows are left out.
    pub rows: Vec<Result<ClientRow, RowError>>,
}

/// One client of the spreadsheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// The row, 1-based as Excel shows it.
    pub row: usize,
    /// The client's CPF, padded to 11 digits when the sheet stored it as a number.
    pub cpf: Cpf,
    /// The name without its commission note, upper-cased (see
    /// [`clean_name`](crate::boleto_files::clean_name)).
    pub name: String,
    /// The name cell as written, trimmed (e.g. `WESLEY JUNIOR DIDEROT CHERISCAR - 70%`).
    pub raw_name: String,
    /// The group/quota (`G/C`), as written.
    pub quota: Option<String>,
    /// The client's standing, when the sheet has the column and the cell is not empty.
    pub situacao: Option<Situacao>,
    /// The sales point in its usual form, `17.308`.
    pub sales_point: Option<String>,
    /// The installment value in centavos.
    pub value_centavos: Option<i64>,
}

/// A client's standing in the `SITUAÇÃO` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Situacao {
    /// `Em dia`: paying on time.
    EmDia,
    /// `INADIMPLENTE`: behind on payments.
    Inadimplente,
    /// `CANCELAMENTO`: being cancelled.
    Cancelamento,
    /// `CANCELADO`: cancelled.
    Cancelado,
    /// Any other text, lower-cased.
    Other(String),
}

impl Situacao {
    /// Reads a cell's text; `None` when it is empty. Case, accents and spacing do not matter.
    pub fn parse(text: &str) -> Option<Situacao> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(match normalize(text).as_str() {
            "EM DIA" => Situacao::EmDia,
            "INADIMPLENTE" => Situacao::Inadimplente,
            "CANCELAMENTO" => Situacao::Cancelamento,
            "CANCELADO" => Situacao::Cancelado,
            _ => Situacao::Other(text.to_lowercase()),
        })
    }

    /// The stable key: `em_dia`, `inadimplente`, `cancelamento`, `cancelado`, or the raw text
    /// lower-cased.
    pub fn as_str(&self) -> &str {
        match self {
            Situacao::EmDia => "em_dia",
            Situacao::Inadimplente => "inadimplente",
            Situacao::Cancelamento => "cancelamento",
            Situacao::Cancelado => "cancelado",
            Situacao::Other(text) => text,
        }
    }
}

/// Why one row could not be read. The reason never holds the full CPF.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("row {row}: {reason}")]
pub struct RowError {
    /// The row, 1-based as Excel shows it.
    pub row: usize,
    /// What is wrong, e.g. `invalid CPF: CPF check digits do not match (a typo?)`.
    pub reason: String,
}

/// Refuses a workbook whose files would unpack to more than [`MAX_UNCOMPRESSED_BYTES`], before
/// anything of it is read (the shared strings are read whole when a workbook opens).
fn check_unpacked_size(path: &Path, file: &str) -> Result<(), SpreadsheetError> {
    let Ok(archive) = std::fs::File::open(path).map(zip::ZipArchive::new) else {
        return Ok(()); // calamine says what is wrong with it
    };
    let Ok(mut archive) = archive else {
        return Ok(());
    };
    // The sizes the central directory declares, read without unpacking anything.
    let mut total = 0u64;
    for i in 0..archive.len() {
        if let Ok(entry) = archive.by_index_raw(i) {
            total = total.saturating_add(entry.size());
        }
    }
    if total > MAX_UNCOMPRESSED_BYTES {
        return Err(SpreadsheetError::TooLarge {
            file: file.to_string(),
            what: format!(
                "it unpacks to {} MB, more than {} MB",
                total / 1_000_000,
                MAX_UNCOMPRESSED_BYTES / 1_000_000
            ),
        });
    }
    Ok(())
}

/// Reads the clients of the first worksheet of the `.xlsx` file at `path`.
///
/// Cells are read one by one, never as a dense grid of the sheet's whole range: a single value
/// in cell `XFD1048576` costs one cell, not a billion. Columns past [`MAX_COLUMNS`] are not
/// read; a sheet of more than [`MAX_CELLS`] cells is refused.
pub fn read_clients(path: &Path) -> Result<Sheet, SpreadsheetError> {
    let file = path.display().to_string();
    check_unpacked_size(path, &file)?;
    let mut workbook: Xlsx<_> = match open_workbook(path) {
        Ok(workbook) => workbook,
        Err(source) => return Err(SpreadsheetError::Open { file, source }),
    };
    let Some(sheet_name) = workbook.sheet_names().first().cloned() else {
        return Err(SpreadsheetError::NoWorksheet { file });
    };
    let read_error = |file: &str, source| SpreadsheetError::ReadSheet {
        file: file.to_string(),
        sheet: sheet_name.clone(),
        source,
    };
    // Rows by their 0-based number, each a sparse list of (column, value).
    let mut sparse: std::collections::BTreeMap<u32, Vec<(u32, Data)>> = Default::default();
    let mut cells = 0usize;
    {
        let mut reader = workbook
            .worksheet_cells_reader(&sheet_name)
            .map_err(|e| read_error(&file, e))?;
        while let Some(cell) = reader.next_cell().map_err(|e| read_error(&file, e))? {
            let (row, column) = cell.get_position();
            let value = Data::from(cell.get_value().clone());
            if column >= MAX_COLUMNS || value == Data::Empty {
                continue;
            }
            cells += 1;
            if cells > MAX_CELLS {
                return Err(SpreadsheetError::TooLarge {
                    file,
                    what: format!("its first sheet has more than {MAX_CELLS} cells"),
                });
            }
            sparse.entry(row).or_default().push((column, value));
        }
    }
    let width = sparse
        .values()
        .flat_map(|cells| cells.iter().map(|(c, _)| *c + 1))
        .max()
        .unwrap_or(0) as usize;
    let dense = |cells: &Vec<(u32, Data)>| {
        let mut row = vec![Data::Empty; width];
        for (c, v) in cells {
            row[*c as usize] = v.clone();
        }
        row
    };
    let Some((header_row, columns)) = sparse
        .range(..HEADER_SCAN_ROWS as u32)
        .find_map(|(r, cells)| Columns::find(&dense(cells)).map(|columns| (*r, columns)))
    else {
        return Err(SpreadsheetError::NoHeader { file });
    };
    let clients = sparse
        .range(header_row + 1..)
        .filter_map(|(r, cells)| columns.read_row(*r as usize + 1, &dense(cells)))
        .collect();
    Ok(Sheet {
        sheet_name,
        header_row: header_row as usize + 1,
        rows: clients,
    })
}

/// Where each known column is in the header row (0-based within the range).
#[derive(Debug)]
struct Columns {
    cpf: usize,
    name: usize,
    quota: Option<usize>,
    situacao: Option<usize>,
    sales_point: Option<usize>,
    value: Option<(usize, String)>,
}

impl Columns {
    /// Recognizes a header row: it needs a CPF column and a name column. The first column
    /// matching a field wins.
    fn find(cells: &[Data]) -> Option<Columns> {
        let mut cpf = None;
        let mut name = None;
        let mut quota = None;
        let mut situacao = None;
        let mut sales_point = None;
        let mut value = None;
        for (i, cell) in cells.iter().enumerate() {
            let Data::String(text) = cell else { continue };
            let slot = match normalize(text).as_str() {
                "CPF" | "CPF/CNPJ" | "DOCUMENTO" => &mut cpf,
                "CONCORCIADO" | "CONSORCIADO" | "CLIENTE" | "NOME" => &mut name,
                "G/C" | "GRUPO/COTA" | "GRUPO COTA" | "COTA" => &mut quota,
                "SITUACAO" | "STATUS" => &mut situacao,
                "P.V" | "PV" | "P.V." | "PONTO DE VENDA" => &mut sales_point,
                "VALOR" | "VALOR PARCELA" => {
                    value.get_or_insert_with(|| (i, text.trim().to_string()));
                    continue;
                }
                _ => continue,
            };
            slot.get_or_insert(i);
        }
        Some(Columns {
            cpf: cpf?,
            name: name?,
            quota,
            situacao,
            sales_point,
            value,
        })
    }

    /// Reads one row below the header; `None` for rows that hold no client (blank, no CPF and
    /// no name, or a `TOTAL` footer).
    fn read_row(&self, row: usize, cells: &[Data]) -> Option<Result<ClientRow, RowError>> {
        let text =
            |column: Option<usize>| column.map(|c| cell_text(cells.get(c))).unwrap_or_default();
        if cells.iter().all(|cell| cell_text(Some(cell)).is_empty()) {
            return None;
        }
        let cpf_text = text(Some(self.cpf));
        let raw_name = text(Some(self.name));
        if cpf_text.is_empty() && raw_name.is_empty() {
            return None;
        }
        // Footers put `TOTAL` under the name, or under the first column, which may be the CPF.
        if [&cpf_text, &raw_name]
            .iter()
            .any(|t| normalize(t).starts_with("TOTAL"))
        {
            return None;
        }
        let error = |reason: String| Some(Err(RowError { row, reason }));
        let cpf = match Cpf::parse(&cpf_text) {
            Ok(cpf) => cpf,
            Err(e) => return error(format!("invalid CPF: {e}")),
        };
        let name = clean_name(&raw_name);
        if name.is_empty() {
            return error("the name is empty".to_string());
        }
        let value_centavos = match &self.value {
            None => None,
            Some((column, header)) => match money_cell(cells.get(*column)) {
                Ok(value) => value,
                Err(shown) => {
                    return error(format!("`{header}` = `{shown}` is not an amount of money"));
                }
            },
        };
        let optional = |column: Option<usize>| Some(text(column)).filter(|t| !t.is_empty());
        Some(Ok(ClientRow {
            row,
            cpf,
            name,
            raw_name,
            quota: optional(self.quota),
            situacao: Situacao::parse(&text(self.situacao)),
            sales_point: optional(self.sales_point).map(|t| sales_point(&t)),
            value_centavos,
        }))
    }
}

/// A cell as trimmed text. Numbers print without a fraction when they have none
/// (`Float(1234567890.0)` → `1234567890`), which is how CPFs and sales points stored as numbers
/// come back.
fn cell_text(cell: Option<&Data>) -> String {
    match cell {
        None | Some(Data::Empty) => String::new(),
        Some(Data::String(text)) => text.trim().to_string(),
        // f64's Display never uses an exponent and drops a zero fraction.
        Some(other) => other.to_string().trim().to_string(),
    }
}

/// Upper-case without accents, trimmed, with single spaces: how header names and standings
/// are compared.
fn normalize(text: &str) -> String {
    let plain: String = text
        .chars()
        .flat_map(char::to_uppercase)
        // Combining marks, in case the text was written decomposed.
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .map(|c| match c {
            'Á' | 'À' | 'Â' | 'Ã' | 'Ä' => 'A',
            'É' | 'È' | 'Ê' | 'Ë' => 'E',
            'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
            'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
            'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
            'Ç' => 'C',
            'Ñ' => 'N',
            other => other,
        })
        .collect();
    plain.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A sales point in its usual form, a dot before the last three digits: `17308`, `17.308` and
/// `17308.0` all give `17.308`. Text that is not a number is kept as written.
fn sales_point(text: &str) -> String {
    let text = match text.strip_suffix(".0") {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => text,
    };
    let is_number = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !is_number {
        return text.to_string();
    }
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 3 {
        return digits;
    }
    let (thousands, units) = digits.split_at(digits.len() - 3);
    format!("{thousands}.{units}")
}

/// A money cell in centavos: `None` when empty, or the cell as shown when it is not money.
fn money_cell(cell: Option<&Data>) -> Result<Option<i64>, String> {
    // An installment's value is never negative.
    let value = money_cell_any(cell)?;
    match (value, cell) {
        (Some(v), Some(c)) if v < 0 => Err(c.to_string()),
        _ => Ok(value),
    }
}

fn money_cell_any(cell: Option<&Data>) -> Result<Option<i64>, String> {
    match cell {
        None | Some(Data::Empty) => Ok(None),
        Some(Data::Float(reais)) => {
            let centavos = (reais * 100.0).round();
            // Far beyond any installment, and beyond what converts to i64 exactly.
            if centavos.is_finite() && centavos.abs() < 1e15 {
                Ok(Some(centavos as i64))
            } else {
                Err(reais.to_string())
            }
        }
        Some(Data::Int(reais)) => reais
            .checked_mul(100)
            .map(Some)
            .ok_or_else(|| reais.to_string()),
        Some(Data::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Data::String(text)) => parse_money(text)
            .map(Some)
            .ok_or_else(|| text.trim().to_string()),
        Some(other) => Err(other.to_string()),
    }
}

/// Parses Brazilian money text into centavos: `R$ 1.234,56`, `R$\u{a0}10,00`, `1234,5`,
/// `-R$ 3,00`. A text with no comma may use a dot for decimals when one or two digits follow
/// it (`123.45`); otherwise dots separate thousands (`1.234` is R$ 1.234,00).
fn parse_money(text: &str) -> Option<i64> {
    let mut text = text.trim();
    let mut negative = false;
    if let Some(rest) = text.strip_prefix('-') {
        negative = true;
        text = rest.trim_start();
    }
    if let Some(rest) = text.strip_prefix("R$") {
        text = rest.trim_start();
    }
    if !negative && let Some(rest) = text.strip_prefix('-') {
        negative = true;
        text = rest.trim_start();
    }
    let (whole, cents) = match text.rsplit_once(',') {
        Some((whole, cents)) => (whole, Some(cents)),
        None => match text.rsplit_once('.') {
            Some((whole, cents)) if !whole.contains('.') && (1..=2).contains(&cents.len()) => {
                (whole, Some(cents))
            }
            _ => (text, None),
        },
    };
    let reais = parse_reais(whole)?;
    let cents = match cents {
        None => 0,
        Some(c) if (1..=2).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()) => {
            let value: i64 = c.parse().ok()?;
            if c.len() == 1 { value * 10 } else { value }
        }
        Some(_) => return None,
    };
    let centavos = reais.checked_mul(100)?.checked_add(cents)?;
    Some(if negative { -centavos } else { centavos })
}

/// Whole reais, with optional dots between groups of three digits (`1.234.567`).
fn parse_reais(text: &str) -> Option<i64> {
    let mut groups = text.split('.');
    let first = groups.next()?;
    let first_ok = !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit());
    let mut digits = first.to_string();
    for group in groups {
        if first.len() > 3 || group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(group);
    }
    if !first_ok || digits.len() > 15 {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_xlsxwriter::{Format, Workbook, Worksheet};
    use std::path::PathBuf;

    const WESLEY: &str = "70899057136";

    /// Writes a workbook with one worksheet built by `fill` into `dir`.
    fn write_xlsx(
        dir: &tempfile::TempDir,
        file: &str,
        fill: impl FnOnce(&mut Worksheet),
    ) -> PathBuf {
        let mut workbook = Workbook::new();
        let sheet = workbook.add_worksheet();
        sheet.set_name("Planilha1").unwrap();
        fill(sheet);
        let path = dir.path().join(file);
        workbook.save(&path).unwrap();
        path
    }

    /// A sheet shaped like `DENER__PLANILHA_GERAL.xlsx`: title block, header on row 12.
    fn known_sheet(sheet: &mut Worksheet) {
        let bold = Format::new().set_bold();
        sheet
            .merge_range(0, 0, 0, 6, "CANOPUS CONSÓRCIOS", &bold)
            .unwrap();
        sheet
            .merge_range(1, 0, 1, 6, "PLANILHA GERAL - DENER", &bold)
            .unwrap();
        sheet.write_string(3, 0, "Consultor: DENER").unwrap();
        sheet.write_string(4, 0, "Atualizada em 05/11").unwrap();
        // Rows 6..=11 blank, header on Excel row 12 (index 11), columns not in the usual order.
        let header = [
            "G/C",
            " cpf ",
            "Concorciado",
            "SITUAÇÃO",
            "P.V",
            "Valor",
            "OBS",
        ];
        for (c, h) in header.iter().enumerate() {
            sheet.write_string(11, c as u16, *h).unwrap();
        }
        // Row 13: CPF as a number that lost its leading zero, float P.V, float value.
        let zero_cpf = Cpf::from_base(8_990_571);
        sheet.write_string(12, 0, "1234/567").unwrap();
        sheet
            .write_number(12, 1, zero_cpf.digits().parse::<f64>().unwrap())
            .unwrap();
        sheet
            .write_string(12, 2, "WESLEY JUNIOR DIDEROT CHERISCAR - 70%")
            .unwrap();
        sheet.write_string(12, 3, "Em dia").unwrap();
        sheet.write_number(12, 4, 17308.0).unwrap();
        sheet.write_number(12, 5, 123.45).unwrap();
        // Row 14: formatted CPF, text money with NBSP, text P.V.
        sheet.write_string(13, 0, "2345/678").unwrap();
        sheet.write_string(13, 1, "708.990.571-36").unwrap();
        sheet.write_string(13, 2, "maria da silva 50%").unwrap();
        sheet.write_string(13, 3, "INADIMPLENTE").unwrap();
        sheet.write_string(13, 4, "17.308").unwrap();
        sheet.write_string(13, 5, "R$\u{a0}1.234,56").unwrap();
        // Row 15 blank. Row 16: bad CPF.
        sheet.write_string(15, 1, "708.990.571-37").unwrap();
        sheet.write_string(15, 2, "JOSÉ - 70").unwrap();
        // Row 17: no name.
        sheet.write_string(16, 1, "123.456.789-09").unwrap();
        sheet.write_string(16, 2, "70%").unwrap();
        // Row 18: a bad value.
        sheet.write_string(17, 1, "12345678909").unwrap();
        sheet.write_string(17, 2, "ANA").unwrap();
        sheet.write_string(17, 5, "abc").unwrap();
        // Row 19: only a note, no CPF nor name: skipped.
        sheet.write_string(18, 6, "ver com o gerente").unwrap();
        // Row 20: cancelled, with other standings and no value.
        sheet.write_string(19, 1, "12345678909").unwrap();
        sheet.write_string(19, 2, "JOÃO CONCEIÇÃO").unwrap();
        sheet.write_string(19, 3, "cancelado").unwrap();
        // Row 21: footer.
        sheet.write_string(20, 2, "TOTAL").unwrap();
        sheet.write_number(20, 5, 1358.01).unwrap();
    }

    #[test]
    fn reads_the_known_sheet() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "DENER__PLANILHA_GERAL.xlsx", known_sheet);
        let sheet = read_clients(&path).unwrap();
        assert_eq!(sheet.sheet_name, "Planilha1");
        assert_eq!(sheet.header_row, 12);
        let rows: Vec<_> = sheet
            .rows
            .iter()
            .map(|r| r.as_ref().map(|c| c.row))
            .collect();
        assert_eq!(rows.len(), 6, "{:#?}", sheet.rows);

        let wesley = sheet.rows[0].as_ref().unwrap();
        assert_eq!(wesley.row, 13);
        assert_eq!(wesley.cpf, Cpf::from_base(8_990_571));
        assert!(wesley.cpf.digits().starts_with("00"));
        assert_eq!(wesley.name, "WESLEY JUNIOR DIDEROT CHERISCAR");
        assert_eq!(wesley.raw_name, "WESLEY JUNIOR DIDEROT CHERISCAR - 70%");
        assert_eq!(wesley.quota.as_deref(), Some("1234/567"));
        assert_eq!(wesley.situacao, Some(Situacao::EmDia));
        assert_eq!(wesley.sales_point.as_deref(), Some("17.308"));
        assert_eq!(wesley.value_centavos, Some(12345));

        let maria = sheet.rows[1].as_ref().unwrap();
        assert_eq!(maria.row, 14);
        assert_eq!(maria.cpf.digits(), WESLEY);
        assert_eq!(maria.name, "MARIA DA SILVA");
        assert_eq!(maria.situacao, Some(Situacao::Inadimplente));
        assert_eq!(maria.sales_point.as_deref(), Some("17.308"));
        assert_eq!(maria.value_centavos, Some(123_456));

        assert_eq!(
            sheet.rows[2],
            Err(RowError {
                row: 16,
                reason: "invalid CPF: CPF check digits do not match (a typo?)".to_string()
            })
        );
        assert_eq!(
            sheet.rows[3],
            Err(RowError {
                row: 17,
                reason: "the name is empty".to_string()
            })
        );
        assert_eq!(
            sheet.rows[4],
            Err(RowError {
                row: 18,
                reason: "`Valor` = `abc` is not an amount of money".to_string()
            })
        );
        let joao = sheet.rows[5].as_ref().unwrap();
        assert_eq!(joao.row, 20);
        assert_eq!(joao.name, "JOÃO CONCEIÇÃO");
        assert_eq!(joao.situacao, Some(Situacao::Cancelado));
        assert_eq!(joao.value_centavos, None);
        assert_eq!(joao.sales_point, None);
        assert_eq!(joao.quota, None);
    }

    #[test]
    fn row_errors_never_hold_the_cpf() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "x.xlsx", |sheet| {
            sheet.write_string(0, 0, "CPF").unwrap();
            sheet.write_string(0, 1, "Nome").unwrap();
            sheet.write_string(1, 0, "708.990.571-37").unwrap();
            sheet.write_string(1, 1, "ANA").unwrap();
            sheet.write_number(2, 0, 7089905713.0).unwrap();
            sheet.write_string(2, 1, "ANA").unwrap();
        });
        let sheet = read_clients(&path).unwrap();
        assert_eq!(sheet.header_row, 1);
        let error = sheet.rows[0].as_ref().unwrap_err();
        assert!(!error.reason.contains("708"), "{}", error.reason);
        assert_eq!(
            error.to_string(),
            "row 2: invalid CPF: CPF check digits do not match (a typo?)"
        );
        // 10 digits: a CPF that lost one leading zero, and so the wrong check digits.
        assert!(!sheet.rows[1].as_ref().unwrap_err().reason.contains("708"));
    }

    #[test]
    fn header_synonyms_and_spacing() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "x.xlsx", |sheet| {
            sheet.write_string(2, 1, "  Cliente ").unwrap();
            sheet.write_string(2, 2, "cpf/cnpj").unwrap();
            sheet.write_string(2, 3, "Grupo   Cota").unwrap();
            sheet.write_string(2, 4, "Situacao").unwrap();
            sheet.write_string(2, 5, "Ponto de Venda").unwrap();
            sheet.write_string(2, 6, "Valor Parcela").unwrap();
            sheet.write_string(3, 1, "ana").unwrap();
            sheet.write_string(3, 2, "70899057136").unwrap();
            sheet.write_number(3, 3, 4321.0).unwrap();
            sheet.write_string(3, 4, "Em Atraso").unwrap();
            sheet.write_string(3, 5, "17308.0").unwrap();
            sheet.write_string(3, 6, "1234.5").unwrap();
        });
        let sheet = read_clients(&path).unwrap();
        assert_eq!(sheet.header_row, 3);
        let ana = sheet.rows[0].as_ref().unwrap();
        assert_eq!(ana.row, 4);
        assert_eq!(ana.name, "ANA");
        assert_eq!(ana.quota.as_deref(), Some("4321"));
        assert_eq!(ana.situacao, Some(Situacao::Other("em atraso".to_string())));
        assert_eq!(ana.situacao.as_ref().unwrap().as_str(), "em atraso");
        assert_eq!(ana.sales_point.as_deref(), Some("17.308"));
        assert_eq!(ana.value_centavos, Some(123_450));
    }

    #[test]
    fn no_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "sem_cabecalho.xlsx", |sheet| {
            sheet.write_string(0, 0, "Relatório").unwrap();
            sheet.write_string(1, 0, "Documento").unwrap();
            sheet.write_string(1, 1, "Telefone").unwrap();
            sheet.write_string(2, 0, "70899057136").unwrap();
        });
        let error = read_clients(&path).unwrap_err();
        assert!(matches!(error, SpreadsheetError::NoHeader { .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "`{}`: no header row with a CPF column and a name column (`Concorciado`, `Cliente` or `Nome`) in its first 50 rows",
                path.display()
            )
        );
    }

    #[test]
    fn header_below_row_50_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "x.xlsx", |sheet| {
            sheet.write_string(50, 0, "CPF").unwrap();
            sheet.write_string(50, 1, "NOME").unwrap();
        });
        assert!(matches!(
            read_clients(&path),
            Err(SpreadsheetError::NoHeader { .. })
        ));
        let path = write_xlsx(&dir, "y.xlsx", |sheet| {
            sheet.write_string(49, 0, "CPF").unwrap();
            sheet.write_string(49, 1, "NOME").unwrap();
        });
        let sheet = read_clients(&path).unwrap();
        assert_eq!(sheet.header_row, 50);
        assert!(sheet.rows.is_empty());
    }

    #[test]
    fn empty_workbook_has_no_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "vazia.xlsx", |_| {});
        assert!(matches!(
            read_clients(&path),
            Err(SpreadsheetError::NoHeader { .. })
        ));
    }

    #[test]
    fn only_the_first_worksheet_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut workbook = Workbook::new();
        workbook.add_worksheet().set_name("Resumo").unwrap();
        let second = workbook.add_worksheet();
        second.write_string(0, 0, "CPF").unwrap();
        second.write_string(0, 1, "NOME").unwrap();
        let path = dir.path().join("duas.xlsx");
        workbook.save(&path).unwrap();
        assert!(matches!(
            read_clients(&path),
            Err(SpreadsheetError::NoHeader { .. })
        ));
    }

    #[test]
    fn not_an_xlsx_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("planilha.csv");
        std::fs::write(&csv, "CPF;NOME\n").unwrap();
        let missing = dir.path().join("nao_existe.xlsx");
        for path in [csv, missing] {
            let error = read_clients(&path).unwrap_err();
            assert!(matches!(error, SpreadsheetError::Open { .. }));
            assert_eq!(
                error.to_string(),
                format!(
                    "cannot open `{}`: consultant spreadsheets must be `.xlsx` workbooks",
                    path.display()
                )
            );
            assert!(std::error::Error::source(&error).is_some());
        }
    }

    #[test]
    fn errors_can_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<SpreadsheetError>();
        send_sync::<RowError>();
    }

    #[test]
    fn headers_are_compared_without_case_accents_or_extra_spaces() {
        assert_eq!(normalize("  Situação "), "SITUACAO");
        assert_eq!(normalize("SITUAC\u{327}A\u{303}O"), "SITUACAO");
        assert_eq!(normalize("grupo \t cota"), "GRUPO COTA");
        assert_eq!(normalize("p.v."), "P.V.");
    }

    #[test]
    fn situacao_keys() {
        let cases = [
            ("Em dia", "em_dia"),
            ("EM  DIA", "em_dia"),
            ("INADIMPLENTE", "inadimplente"),
            ("Cancelamento", "cancelamento"),
            ("CANCELADO", "cancelado"),
            ("Contemplado", "contemplado"),
        ];
        for (text, key) in cases {
            assert_eq!(Situacao::parse(text).unwrap().as_str(), key, "{text}");
        }
        assert_eq!(Situacao::parse("  "), None);
    }

    #[test]
    fn sales_points() {
        for (text, expected) in [
            ("17308", "17.308"),
            ("17.308", "17.308"),
            ("17308.0", "17.308"),
            ("308", "308"),
            ("1234567", "1234.567"),
            ("PV CENTRO", "PV CENTRO"),
        ] {
            assert_eq!(sales_point(text), expected, "{text}");
        }
        assert_eq!(cell_text(Some(&Data::Float(17308.0))), "17308");
    }

    #[test]
    fn money_text() {
        for (text, centavos) in [
            ("R$ 1.234,56", 123_456),
            ("R$\u{a0}1.234,56", 123_456),
            ("R$1.234,56", 123_456),
            ("1234,56", 123_456),
            ("1.234.567,89", 123_456_789),
            ("10,5", 1050),
            ("0,01", 1),
            ("1.234", 123_400),
            ("123.45", 12345),
            ("123", 12300),
            ("-R$ 3,00", -300),
            ("R$ -3,00", -300),
            ("  R$ 0,00 ", 0),
        ] {
            assert_eq!(parse_money(text), Some(centavos), "{text}");
        }
        for text in [
            "abc",
            "R$",
            "",
            "1,234",
            "12.34.56",
            "1.23,45",
            "1234.567,00",
            ",50",
            "R$ 1,2,3",
            "--1",
            "1e3",
            "R$ 1 234,56",
        ] {
            assert_eq!(parse_money(text), None, "{text}");
        }
    }

    #[test]
    fn money_cells() {
        assert_eq!(money_cell(Some(&Data::Float(123.45))), Ok(Some(12345)));
        assert_eq!(money_cell(Some(&Data::Float(0.125))), Ok(Some(13)));
        assert_eq!(money_cell(Some(&Data::Float(-0.125))), Err("-0.125".into()));
        assert_eq!(money_cell(Some(&Data::Float(1358.01))), Ok(Some(135_801)));
        assert_eq!(money_cell(Some(&Data::Int(7))), Ok(Some(700)));
        assert_eq!(money_cell(Some(&Data::Empty)), Ok(None));
        assert_eq!(money_cell(None), Ok(None));
        assert_eq!(money_cell(Some(&Data::String("  ".into()))), Ok(None));
        assert_eq!(money_cell(Some(&Data::Float(f64::NAN))), Err("NaN".into()));
        assert_eq!(money_cell(Some(&Data::Bool(true))), Err("true".into()));
    }

    /// Issue 15: one value in the last cell of a sheet aborted on a 550 GB allocation, one in
    /// `Z1048576` took 881 MB: cells are read one by one, never as a dense grid.
    #[test]
    fn a_value_in_the_sheets_last_cell_costs_one_cell() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_xlsx(&dir, "longe.xlsx", |sheet| {
            sheet.write_string(0, 0, "CPF").unwrap();
            sheet.write_string(0, 1, "Nome").unwrap();
            sheet.write_string(1, 0, WESLEY).unwrap();
            sheet.write_string(1, 1, "WESLEY").unwrap();
            sheet.write_string(1_048_575, 16_383, "x").unwrap();
            sheet.write_string(1_048_575, 25, "y").unwrap();
        });
        let sheet = read_clients(&path).unwrap();
        assert_eq!(sheet.header_row, 1);
        // The far row holds only a note (neither CPF nor name): skipped like any other.
        assert_eq!(sheet.rows.len(), 1, "{:?}", sheet.rows);
        assert_eq!(sheet.rows[0].as_ref().unwrap().name, "WESLEY");
    }

    /// A workbook whose files unpack to more than the bound is refused before it is read.
    #[test]
    fn a_zip_bomb_is_refused_unread() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomba.xlsx");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("xl/sharedStrings.xml", options).unwrap();
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..65 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1_000_000);
        let error = read_clients(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "`{}` is too large to be a consultant spreadsheet: it unpacks to 68 MB, more than 67 MB; nothing was imported",
                path.display()
            )
        );
    }
}
