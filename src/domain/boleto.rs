//! Bank boletos (FEBRABAN bank slips, not utility "concessionária" slips): the 44-digit barcode
//! and the 47-digit linha digitável, their check digits, amount and due-date factor.

use chrono::{Days, NaiveDate};

/// Why a boleto number is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoletoError {
    /// Nothing but whitespace.
    #[error("the boleto number is empty")]
    Empty,
    /// A character other than digits, dots and whitespace.
    #[error("the boleto number has characters other than digits, dots and spaces")]
    BadCharacters,
    /// Not the number of digits of the expected form.
    #[error("the boleto number has {digits} digits, expected {expected}")]
    WrongLength {
        /// How many digits the text had.
        digits: usize,
        /// What was expected: `47`, `44` or `44 or 47`.
        expected: &'static str,
    },
    /// One of the three mod-10 check digits of the linha digitável fails.
    #[error("field {field} of the linha digitável fails its check digit (a typo?)")]
    FieldCheckDigit {
        /// The field, 1 to 3.
        field: u8,
    },
    /// The mod-11 general check digit fails.
    #[error("the boleto's general check digit does not match (a typo?)")]
    GeneralCheckDigit,
}

/// A valid boleto, in both of its forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linha {
    /// The 47 digits of the linha digitável.
    pub digits: String,
    /// The 44 digits of the barcode.
    pub barcode: String,
    /// The amount in centavos (0 when the boleto leaves it open).
    pub amount_centavos: i64,
    /// The due-date factor (0 = no due date); see [`due_date_from_factor`].
    pub due_factor: u16,
}

impl Linha {
    /// The due date, choosing the factor cycle closest to `reference` (usually today).
    pub fn due_date(&self, reference: NaiveDate) -> Option<NaiveDate> {
        due_date_from_factor(self.due_factor, reference)
    }

    /// The 3-digit bank code.
    pub fn bank(&self) -> &str {
        &self.barcode[0..3]
    }
}

/// Validates a 47-digit linha digitável (spaces and dots are ignored): its three field check
/// digits (mod 10) and the general check digit (mod 11).
pub fn validate_linha(s: &str) -> Result<Linha, BoletoError> {
    let digits = only_digits(s)?;
    if digits.len() != 47 {
        return Err(BoletoError::WrongLength {
            digits: digits.len(),
            expected: "47",
        });
    }
    for (field, data, dv) in [(1u8, 0..9, 9), (2, 10..20, 20), (3, 21..31, 31)] {
        if mod10(&digits[data]) != digit_at(&digits, dv) {
            return Err(BoletoError::FieldCheckDigit { field });
        }
    }
    let barcode = linha_to_barcode(&digits);
    check_general(&barcode)?;
    Ok(linha_from_parts(digits, barcode))
}

/// Validates a 44-digit barcode (spaces and dots are ignored): its general check digit.
pub fn validate_barcode(s: &str) -> Result<Linha, BoletoError> {
    let barcode = only_digits(s)?;
    if barcode.len() != 44 {
        return Err(BoletoError::WrongLength {
            digits: barcode.len(),
            expected: "44",
        });
    }
    check_general(&barcode)?;
    let digits = barcode_to_linha(&barcode);
    Ok(linha_from_parts(digits, barcode))
}

/// Validates either form, by its number of digits (44: barcode, 47: linha digitável).
pub fn validate_any(s: &str) -> Result<Linha, BoletoError> {
    let digits = only_digits(s)?;
    match digits.len() {
        44 => validate_barcode(&digits),
        47 => validate_linha(&digits),
        n => Err(BoletoError::WrongLength {
            digits: n,
            expected: "44 or 47",
        }),
    }
}

/// The day the factor counts from.
fn factor_base() -> NaiveDate {
    NaiveDate::from_ymd_opt(1997, 10, 7).expect("1997-10-07 is a date")
}

/// Days in one factor cycle: the factor ran 1000..=9999 and restarted at 1000 on 2025-02-22.
const CYCLE_DAYS: i64 = 9000;

/// The due date of a factor (days from 1997-10-07, restarted at 1000 on 2025-02-22), choosing
/// among the cycles the date closest to `reference` (the later one on a tie). Factor 0 means no
/// due date; factors above 9999 do not exist.
pub fn due_date_from_factor(factor: u16, reference: NaiveDate) -> Option<NaiveDate> {
    let base = factor_base();
    match factor {
        0 | 10_000.. => None,
        // Factors below 1000 only existed before the first 1000 (2000-07-03).
        1..=999 => base.checked_add_days(Days::new(u64::from(factor))),
        _ => {
            let since = (reference - base).num_days() - i64::from(factor);
            let k = since.div_euclid(CYCLE_DAYS).max(0);
            [k, k + 1]
                .into_iter()
                .filter_map(|k| {
                    let days = u64::try_from(i64::from(factor) + k * CYCLE_DAYS).ok()?;
                    base.checked_add_days(Days::new(days))
                })
                .min_by_key(|d| ((*d - reference).num_days().abs(), std::cmp::Reverse(*d)))
        }
    }
}

/// The factor of a due date. Dates on or before 1997-10-07 have none (0).
pub fn factor_for(due: NaiveDate) -> u16 {
    let days = (due - factor_base()).num_days();
    let factor = match days {
        ..=0 => 0,
        1..=999 => days,
        _ => 1000 + (days - 1000) % CYCLE_DAYS,
    };
    factor as u16
}

/// Builds a valid linha digitável (for the sandbox). The bank is taken as its digits, left-padded
/// to 3; the free field as its digits, left-padded with zeros and cut to 25; the amount is
/// clamped to 0..=9_999_999_999 centavos. For the sandbox (and tests) only.
#[cfg(any(test, feature = "sandbox"))]
pub fn build_linha(bank: &str, due: NaiveDate, amount_centavos: i64, free_field: &str) -> String {
    let bank: String = format!("{:0>3}", keep_digits(bank))
        .chars()
        .take(3)
        .collect();
    let free: String = format!("{:0>25}", keep_digits(free_field))
        .chars()
        .take(25)
        .collect();
    let amount = amount_centavos.clamp(0, 9_999_999_999);
    let without_dv = format!("{bank}9{:04}{amount:010}{free}", factor_for(due));
    let dv = general_dv(&without_dv);
    let barcode = format!("{}{dv}{}", &without_dv[..4], &without_dv[4..]);
    barcode_to_linha(&barcode)
}

/// Rearranges a 47-digit linha digitável into its 44-digit barcode.
fn linha_to_barcode(linha: &str) -> String {
    format!(
        "{}{}{}{}{}{}",
        &linha[0..4],
        &linha[32..33],
        &linha[33..47],
        &linha[4..9],
        &linha[10..20],
        &linha[21..31]
    )
}

/// Rearranges a 44-digit barcode into its 47-digit linha digitável, computing the field DVs.
fn barcode_to_linha(barcode: &str) -> String {
    let field1 = format!("{}{}", &barcode[0..4], &barcode[19..24]);
    let field2 = &barcode[24..34];
    let field3 = &barcode[34..44];
    format!(
        "{field1}{}{field2}{}{field3}{}{}{}",
        mod10(&field1),
        mod10(field2),
        mod10(field3),
        &barcode[4..5],
        &barcode[5..19]
    )
}

fn linha_from_parts(digits: String, barcode: String) -> Linha {
    let due_factor = barcode[5..9].parse().unwrap_or(0);
    let amount_centavos = barcode[9..19].parse().unwrap_or(0);
    Linha {
        digits,
        barcode,
        amount_centavos,
        due_factor,
    }
}

fn check_general(barcode: &str) -> Result<(), BoletoError> {
    let without_dv = format!("{}{}", &barcode[..4], &barcode[5..]);
    if general_dv(&without_dv) == digit_at(barcode, 4) {
        Ok(())
    } else {
        Err(BoletoError::GeneralCheckDigit)
    }
}

/// Mod-10 check digit: weights 2, 1, 2, … from the right, digits of the products summed.
fn mod10(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .zip([2u32, 1].into_iter().cycle())
        .map(|(b, w)| {
            let p = u32::from(b - b'0') * w;
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Mod-11 general check digit over the 43 other digits: weights 2..=9 cycling from the right;
/// 11 - sum % 11, with 0, 10 and 11 becoming 1.
fn general_dv(without_dv: &str) -> u8 {
    let sum: u32 = without_dv
        .bytes()
        .rev()
        .zip((2u32..=9).cycle())
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    match 11 - sum % 11 {
        0 | 10 | 11 => 1,
        dv => dv as u8,
    }
}

fn digit_at(digits: &str, i: usize) -> u8 {
    digits.as_bytes()[i] - b'0'
}

#[cfg(any(test, feature = "sandbox"))]
fn keep_digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The digits of `s`, ignoring dots and whitespace; any other character is an error.
fn only_digits(s: &str) -> Result<String, BoletoError> {
    if s.trim().is_empty() {
        return Err(BoletoError::Empty);
    }
    let mut digits = String::with_capacity(47);
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if !(c == '.' || c.is_whitespace()) {
            return Err(BoletoError::BadCharacters);
        }
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &str = "00190000090114971860168524522114675860000102656";

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// Replaces the digit at `i` by the next digit (mod 10).
    fn bump(s: &str, i: usize) -> String {
        let mut b = s.as_bytes().to_vec();
        b[i] = b'0' + (b[i] - b'0' + 1) % 10;
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn known_example_is_valid() {
        let l = validate_linha(KNOWN).unwrap();
        assert_eq!(l.digits, KNOWN);
        assert_eq!(l.barcode.len(), 44);
        assert_eq!(l.barcode, "00196758600001026560000001149718606852452211");
        assert_eq!(l.amount_centavos, 102656);
        assert_eq!(l.due_factor, 7586);
        assert_eq!(l.bank(), "001");
        assert_eq!(l.due_date(date(2018, 7, 1)), Some(date(2018, 7, 15)));
        assert_eq!(l.due_date(date(2040, 1, 1)), Some(date(2043, 3, 6)));
    }

    #[test]
    fn accepts_formatted_linha() {
        let formatted = "00190.00009 01149.718601 68524.522114 6 75860000102656";
        assert_eq!(validate_linha(formatted).unwrap().digits, KNOWN);
        assert_eq!(validate_any(formatted).unwrap().digits, KNOWN);
    }

    #[test]
    fn barcode_round_trip() {
        let l = validate_linha(KNOWN).unwrap();
        let from_barcode = validate_barcode(&l.barcode).unwrap();
        assert_eq!(from_barcode, l);
        assert_eq!(validate_any(&l.barcode).unwrap(), l);
        assert_eq!(barcode_to_linha(&linha_to_barcode(KNOWN)), KNOWN);
    }

    #[test]
    fn tampered_fields_fail_their_check_digit() {
        // Field 1 data digits 0..9 (DV at 9), field 2 at 10..20 (20), field 3 at 21..31 (31).
        for (i, field) in [(0, 1), (5, 1), (9, 1), (10, 2), (20, 2), (21, 3), (31, 3)] {
            assert_eq!(
                validate_linha(&bump(KNOWN, i)),
                Err(BoletoError::FieldCheckDigit { field }),
                "digit {i}"
            );
        }
        // Field 4 (the general DV) and field 5 (factor and amount) fail the general DV.
        for i in [32, 33, 40, 46] {
            assert_eq!(
                validate_linha(&bump(KNOWN, i)),
                Err(BoletoError::GeneralCheckDigit),
                "{i}"
            );
        }
        let barcode = linha_to_barcode(KNOWN);
        assert_eq!(
            validate_barcode(&bump(&barcode, 4)),
            Err(BoletoError::GeneralCheckDigit)
        );
        assert_eq!(
            validate_barcode(&bump(&barcode, 43)),
            Err(BoletoError::GeneralCheckDigit)
        );
    }

    #[test]
    fn swapped_digits_across_fields_are_caught() {
        // Swapping two whole fields keeps each field DV but breaks the general DV.
        let swapped = format!(
            "{}{}{}{}",
            &KNOWN[..10],
            &KNOWN[21..32],
            &KNOWN[10..21],
            &KNOWN[32..]
        );
        assert_eq!(
            validate_linha(&swapped),
            Err(BoletoError::GeneralCheckDigit)
        );
    }

    #[test]
    fn length_and_character_errors() {
        assert_eq!(validate_linha(""), Err(BoletoError::Empty));
        assert_eq!(validate_any("  "), Err(BoletoError::Empty));
        assert_eq!(
            validate_linha(&KNOWN[..46]),
            Err(BoletoError::WrongLength {
                digits: 46,
                expected: "47"
            })
        );
        assert_eq!(
            validate_barcode(KNOWN),
            Err(BoletoError::WrongLength {
                digits: 47,
                expected: "44"
            })
        );
        assert_eq!(
            validate_any(&format!("{KNOWN}0")),
            Err(BoletoError::WrongLength {
                digits: 48,
                expected: "44 or 47"
            })
        );
        assert_eq!(
            validate_linha(&format!("{}-6", &KNOWN[..46])),
            Err(BoletoError::BadCharacters)
        );
        assert_eq!(validate_any("abc"), Err(BoletoError::BadCharacters));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            BoletoError::WrongLength {
                digits: 46,
                expected: "47"
            }
            .to_string(),
            "the boleto number has 46 digits, expected 47"
        );
        assert_eq!(
            BoletoError::FieldCheckDigit { field: 2 }.to_string(),
            "field 2 of the linha digitável fails its check digit (a typo?)"
        );
    }

    #[test]
    fn check_digit_rules() {
        assert_eq!(mod10("001900000"), 9);
        assert_eq!(mod10("0"), 0);
        // General DV: remainders 0 and 1 map to 1.
        let zeros = "0".repeat(43);
        assert_eq!(general_dv(&zeros), 1);
    }

    #[test]
    fn factors() {
        assert_eq!(factor_for(date(2000, 7, 3)), 1000);
        assert_eq!(factor_for(date(2025, 2, 21)), 9999);
        assert_eq!(factor_for(date(2025, 2, 22)), 1000);
        assert_eq!(factor_for(date(2025, 2, 23)), 1001);
        assert_eq!(factor_for(date(2018, 7, 15)), 7586);
        assert_eq!(factor_for(date(1997, 10, 8)), 1);
        assert_eq!(factor_for(date(1997, 10, 7)), 0);
        assert_eq!(factor_for(date(1990, 1, 1)), 0);
    }

    #[test]
    fn due_dates_from_factor() {
        let today = date(2025, 6, 1);
        assert_eq!(due_date_from_factor(0, today), None);
        assert_eq!(due_date_from_factor(10_000, today), None);
        assert_eq!(due_date_from_factor(1000, today), Some(date(2025, 2, 22)));
        assert_eq!(
            due_date_from_factor(1000, date(2001, 1, 1)),
            Some(date(2000, 7, 3))
        );
        assert_eq!(
            due_date_from_factor(9999, date(2025, 2, 1)),
            Some(date(2025, 2, 21))
        );
        assert_eq!(
            due_date_from_factor(9999, date(2025, 3, 1)),
            Some(date(2025, 2, 21))
        );
        assert_eq!(
            due_date_from_factor(1001, date(2025, 2, 21)),
            Some(date(2025, 2, 23))
        );
        assert_eq!(due_date_from_factor(5, today), Some(date(1997, 10, 12)));
        // A reference before the base still picks the first cycle.
        assert_eq!(
            due_date_from_factor(1000, date(1990, 1, 1)),
            Some(date(2000, 7, 3))
        );
    }

    #[test]
    fn factor_round_trip_around_today() {
        let reference = date(2025, 6, 1);
        let mut d = date(2024, 1, 1);
        while d < date(2027, 1, 1) {
            assert_eq!(
                due_date_from_factor(factor_for(d), reference),
                Some(d),
                "{d}"
            );
            d = d.succ_opt().unwrap();
        }
    }

    #[test]
    fn build_linha_round_trips() {
        let cases = [
            (
                "001",
                date(2025, 2, 21),
                102656,
                "0000001149718606852452211",
            ),
            ("341", date(2025, 2, 22), 0, "1234567890123456789012345"),
            ("237", date(2026, 12, 31), 9990, "42"),
            ("1", date(2030, 5, 10), 9_999_999_999, ""),
            ("104", date(2025, 7, 1), 99_999_999_999, "x1y2"),
        ];
        for (bank, due, amount, free) in cases {
            let linha = build_linha(bank, due, amount, free);
            let l = validate_linha(&linha).unwrap_or_else(|e| panic!("{linha}: {e}"));
            assert_eq!(l.digits.len(), 47);
            assert_eq!(l.amount_centavos, amount.clamp(0, 9_999_999_999));
            assert_eq!(l.due_date(due), Some(due));
            assert_eq!(l.bank(), format!("{bank:0>3}"));
        }
        assert_eq!(
            build_linha(
                "001",
                date(2018, 7, 15),
                102656,
                "0000001149718606852452211"
            ),
            KNOWN
        );
    }
}
