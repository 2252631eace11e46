//! Names of boleto PDF files and of the consultants' folders they are filed in
//! (`{NOME}_{MES}.pdf`, e.g. `WESLEY_JUNIOR_DIDEROT_CHERISCAR_NOVEMBRO.pdf`).
//!
//! Every name built here is a single path component: it cannot be empty, cannot be `.` or `..`
//! and holds no separator, so nothing read from a spreadsheet can lead out of the folder.

use crate::domain::cpf::Cpf;

/// The longest [`file_stem`] and [`folder_name`], in bytes: far below the 255-byte limit of
/// common file systems, with room for a homonym suffix and `.pdf`.
const MAX_STEM_BYTES: usize = 120;

/// The client's name without its commission note, upper-cased, with single spaces.
///
/// Everything from the first `%` is dropped, then a trailing number and a trailing `-`
/// (`WESLEY JUNIOR DIDEROT CHERISCAR - 70%` → `WESLEY JUNIOR DIDEROT CHERISCAR`,
/// `MARIA DA SILVA 50%` → `MARIA DA SILVA`, `José - 70` → `JOSÉ`). May return an empty text
/// when the cell held nothing but a note.
pub fn clean_name(raw: &str) -> String {
    let name = raw.split('%').next().unwrap_or_default().trim_end();
    let name = strip_trailing_number(name).trim_end();
    let name = name.strip_suffix('-').unwrap_or(name);
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// The Portuguese name of a month as used in file names, `JANEIRO` .. `DEZEMBRO`.
///
/// # Panics
///
/// If `month` is not in `1..=12`: months come from dates, so another number is a bug.
pub fn month_name(month: u32) -> &'static str {
    const MONTHS: [&str; 12] = [
        "JANEIRO",
        "FEVEREIRO",
        "MARÇO",
        "ABRIL",
        "MAIO",
        "JUNHO",
        "JULHO",
        "AGOSTO",
        "SETEMBRO",
        "OUTUBRO",
        "NOVEMBRO",
        "DEZEMBRO",
    ];
    match month {
        1..=12 => MONTHS[month as usize - 1],
        _ => panic!("month {month} is not in 1..=12"),
    }
}

/// The file name without `.pdf` of a client's boleto for a month: `{NOME}_{MES}`, e.g.
/// `WESLEY_JUNIOR_DIDEROT_CHERISCAR_NOVEMBRO`.
///
/// `name` should already be cleaned with [`clean_name`]. The name part keeps letters (accented
/// too), digits, `-` and `_`; spaces, `/` and `\` become `_`; anything else (dots, quotes,
/// control characters, ...) is dropped; runs of `_` collapse and `_`/`-` are trimmed at both
/// ends. An empty result becomes `CLIENTE`. The stem is at most 120 bytes, cut in the name part
/// so that the month is always kept.
///
/// # Panics
///
/// If `month` is not in `1..=12`, as [`month_name`].
pub fn file_stem(name: &str, month: u32) -> String {
    let month = month_name(month);
    let room = MAX_STEM_BYTES - month.len() - 1;
    let name = safe_component(name, "CLIENTE", room);
    format!("{name}_{month}")
}

/// The folder of a consultant's boletos: the consultant's name upper-cased, with the same
/// character rules as [`file_stem`], at most 120 bytes, and `CONSULTOR` when nothing is left.
pub fn folder_name(consultant: &str) -> String {
    safe_component(consultant, "CONSULTOR", MAX_STEM_BYTES)
}

/// The stem for a client whose name and month are the same as another client's: `stem` then
/// `_` and the last four digits of the CPF (the two before the check digits and the two check
/// digits), e.g. `MARIA_DA_SILVA_NOVEMBRO_7136` for `708.990.571-36`.
///
/// It depends only on the client's CPF, so the same client gets the same file name every month
/// and on every run, whatever the order of the spreadsheet rows. Two homonyms whose CPFs end
/// in the same four digits still collide: callers must not overwrite an existing file.
pub fn homonym_stem(stem: &str, cpf: &Cpf) -> String {
    let digits = cpf.digits();
    format!("{stem}_{}", &digits[digits.len() - 4..])
}

/// `text` without a trailing number such as `70` or `12,5`. A trailing dot with no digit
/// (`JR.`) is part of the name and stays.
fn strip_trailing_number(text: &str) -> &str {
    let head = text.trim_end_matches(|c: char| c.is_ascii_digit() || c == ',' || c == '.');
    if text[head.len()..].bytes().any(|b| b.is_ascii_digit()) {
        head
    } else {
        text
    }
}

/// Applies the file-name character rules to `text`, upper-cased, cut to `max_bytes`, or
/// `fallback` if nothing is left.
fn safe_component(text: &str, fallback: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.to_uppercase().chars() {
        let c = if c.is_whitespace() || c == '/' || c == '\\' {
            '_'
        } else {
            c
        };
        let keep = c.is_alphabetic() || c.is_ascii_digit() || c == '-' || c == '_';
        if !keep || (c == '_' && out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    let mut end = out.len().min(max_bytes);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let trimmed = out[..end].trim_matches(|c| c == '_' || c == '-');
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_name_drops_the_commission_note() {
        for (raw, clean) in [
            (
                "WESLEY JUNIOR DIDEROT CHERISCAR - 70%",
                "WESLEY JUNIOR DIDEROT CHERISCAR",
            ),
            ("MARIA DA SILVA 50%", "MARIA DA SILVA"),
            ("JOSÉ - 70", "JOSÉ"),
            ("JOSÉ-70", "JOSÉ"),
            ("JOSÉ 70", "JOSÉ"),
            ("ANA PAULA -70% comissão", "ANA PAULA"),
            ("ANA PAULA 70 %", "ANA PAULA"),
            ("ANA PAULA 12,5%", "ANA PAULA"),
            ("  joão   de  souza  ", "JOÃO DE SOUZA"),
            ("MARIA-CLARA DOS ANJOS", "MARIA-CLARA DOS ANJOS"),
            ("JOSÉ\u{a0}- 70%", "JOSÉ"),
            ("JOÃO SILVA JR.", "JOÃO SILVA JR."),
            ("JOÃO SILVA JR. 70%", "JOÃO SILVA JR."),
        ] {
            assert_eq!(clean_name(raw), clean, "{raw}");
        }
    }

    #[test]
    fn clean_name_of_a_bare_note_is_empty() {
        assert_eq!(clean_name("70%"), "");
        assert_eq!(clean_name("  "), "");
        assert_eq!(clean_name(""), "");
    }

    #[test]
    fn month_names() {
        assert_eq!(month_name(1), "JANEIRO");
        assert_eq!(month_name(3), "MARÇO");
        assert_eq!(month_name(11), "NOVEMBRO");
        assert_eq!(month_name(12), "DEZEMBRO");
    }

    #[test]
    #[should_panic(expected = "month 13 is not in 1..=12")]
    fn month_13_is_a_bug() {
        month_name(13);
    }

    #[test]
    fn file_stem_of_the_known_example() {
        let name = clean_name("WESLEY JUNIOR DIDEROT CHERISCAR - 70%");
        assert_eq!(
            file_stem(&name, 11),
            "WESLEY_JUNIOR_DIDEROT_CHERISCAR_NOVEMBRO"
        );
    }

    #[test]
    fn file_stem_keeps_accents_and_upper_cases() {
        assert_eq!(file_stem("joão conceição", 3), "JOÃO_CONCEIÇÃO_MARÇO");
        assert_eq!(file_stem("ANA-MARIA_2", 1), "ANA-MARIA_2_JANEIRO");
    }

    #[test]
    fn file_stem_drops_other_characters() {
        assert_eq!(
            file_stem("D'ÁVILA \"JR.\" <X>\t*?:|", 5),
            "DÁVILA_JR_X_MAIO"
        );
        assert_eq!(file_stem("A \u{0}\u{7}B", 5), "A_B_MAIO");
        assert_eq!(file_stem("__ - ANA - __", 5), "ANA_MAIO");
    }

    #[test]
    fn file_stem_cannot_leave_the_folder() {
        for name in [
            "../../etc/passwd",
            "..\\..\\windows",
            "/abs/path",
            "..",
            ".",
            "a/../../b",
        ] {
            let stem = file_stem(name, 11);
            assert!(!stem.contains('.'), "{stem}");
            assert!(!stem.contains('/'), "{stem}");
            assert!(!stem.contains('\\'), "{stem}");
            assert!(!stem.starts_with('_') && !stem.starts_with('-'), "{stem}");
        }
        assert_eq!(file_stem("../../etc/passwd", 11), "ETC_PASSWD_NOVEMBRO");
        assert_eq!(file_stem("..", 11), "CLIENTE_NOVEMBRO");
    }

    #[test]
    fn file_stem_is_never_empty() {
        assert_eq!(file_stem("", 2), "CLIENTE_FEVEREIRO");
        assert_eq!(file_stem("%$#@!", 2), "CLIENTE_FEVEREIRO");
        assert_eq!(file_stem(" _-_ ", 2), "CLIENTE_FEVEREIRO");
    }

    #[test]
    fn file_stem_caps_long_names_on_a_char_boundary() {
        let long = "JOÃO ".repeat(60);
        let stem = file_stem(&long, 3);
        assert!(stem.len() <= MAX_STEM_BYTES, "{}", stem.len());
        assert!(stem.ends_with("_MARÇO"));
        assert!(stem.starts_with("JOÃO_JOÃO"));
        assert!(!stem.contains("__"));
        // A cut in the middle of a two-byte letter must step back, not panic.
        let accents = "Ç".repeat(200);
        for month in 1..=12 {
            let stem = file_stem(&accents, month);
            assert!(stem.len() <= MAX_STEM_BYTES);
            assert!(stem.ends_with(month_name(month)));
        }
    }

    #[test]
    fn folder_names() {
        assert_eq!(folder_name("Dener"), "DENER");
        assert_eq!(folder_name("  dener  da silva "), "DENER_DA_SILVA");
        assert_eq!(folder_name("Conceição"), "CONCEIÇÃO");
        assert_eq!(folder_name(".."), "CONSULTOR");
        assert_eq!(folder_name("."), "CONSULTOR");
        assert_eq!(folder_name(""), "CONSULTOR");
        assert_eq!(folder_name("../../tmp"), "TMP");
        assert!(folder_name(&"x".repeat(500)).len() <= MAX_STEM_BYTES);
    }

    #[test]
    fn homonyms_get_the_end_of_their_cpf() {
        let stem = file_stem("MARIA DA SILVA", 11);
        let first = Cpf::parse("708.990.571-36").unwrap();
        let second = Cpf::from_base(123_456_789);
        assert_eq!(homonym_stem(&stem, &first), "MARIA_DA_SILVA_NOVEMBRO_7136");
        assert_eq!(homonym_stem(&stem, &second), "MARIA_DA_SILVA_NOVEMBRO_8909");
        assert_ne!(homonym_stem(&stem, &first), homonym_stem(&stem, &second));
        // Stable: the same client gets the same name on every run.
        assert_eq!(homonym_stem(&stem, &first), homonym_stem(&stem, &first));
    }

    #[test]
    fn homonym_stem_keeps_leading_zeros() {
        let cpf = Cpf::from_base(1);
        assert_eq!(cpf.digits(), "00000000191");
        assert_eq!(homonym_stem("ANA_MAIO", &cpf), "ANA_MAIO_0191");
    }
}
