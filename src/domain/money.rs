//! Money as integer centavos (`i64`): parsing the amounts found in JSON answers and Brazilian
//! text (`R$ 1.234,56`), and formatting centavos back as Brazilian text. No floating point.

use serde_json::Value;

/// Why a value is not an amount of money. The offending text is quoted (shortened if long).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Nothing but whitespace.
    #[error("the amount of money is empty")]
    Empty,
    /// Not a number in any accepted form.
    #[error("`{text}` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`)")]
    NotMoney {
        /// The offending text.
        text: String,
    },
    /// A text amount with more than two decimal places (centavos).
    #[error("`{text}` has more than 2 decimal places (expected e.g. `R$ 1.234,56` or `99.90`)")]
    TooManyDecimals {
        /// The offending text.
        text: String,
    },
    /// The amount does not fit in an `i64` of centavos.
    #[error("`{text}` is too large an amount of money")]
    OutOfRange {
        /// The offending text.
        text: String,
    },
    /// A negative amount where only an amount owed or paid makes sense (an import).
    #[error("`{text}` is negative: an amount here is R$ 0,00 or more")]
    Negative {
        /// The offending text.
        text: String,
    },
    /// A JSON value that is neither a number nor a string.
    #[error("`{text}` is neither a number nor a text amount of money")]
    NotANumber {
        /// The offending JSON, as text.
        text: String,
    },
}

/// Reads an amount in reais from JSON as centavos.
///
/// A JSON number is read from its textual form (`99.9` → 9990, `100` → 10000, `1e3` → 100000),
/// rounding half away from zero beyond the second decimal (`1234.565` → 123457). A JSON string is
/// read by [`parse_brl`] (dot or Brazilian format). The sign is kept.
pub fn centavos_from_json(v: &Value) -> Result<i64, MoneyError> {
    match v {
        Value::Number(n) => {
            let text = n.to_string();
            number_text_to_centavos(&text).ok_or_else(|| {
                if is_number_text(&text) {
                    MoneyError::OutOfRange { text: shown(&text) }
                } else {
                    MoneyError::NotMoney { text: shown(&text) }
                }
            })
        }
        Value::String(s) => parse_brl(s),
        other => Err(MoneyError::NotANumber {
            text: shown(&other.to_string()),
        }),
    }
}

/// Parses an amount in reais written as text into centavos.
///
/// Accepts `R$ 1.234,56` (also with a non-breaking space after `R$`), `1.234,56`, `99,9`,
/// `99,90`, `99.90` (a single dot followed by 1-2 digits is a decimal point), `1234`, `1.234`
/// (dots followed by groups of exactly 3 digits are thousands separators → 123400), and a
/// leading minus (`-5,00`, `-R$ 5,00`, `R$ -5,00`).
/// [`parse_brl`] for an amount owed or paid (what an operator imports): never negative.
pub fn parse_amount(s: &str) -> Result<i64, MoneyError> {
    let centavos = parse_brl(s)?;
    if centavos < 0 {
        return Err(MoneyError::Negative {
            text: shown(s.trim()),
        });
    }
    Ok(centavos)
}

pub fn parse_brl(s: &str) -> Result<i64, MoneyError> {
    let text = s.trim();
    if text.is_empty() {
        return Err(MoneyError::Empty);
    }
    let not_money = || MoneyError::NotMoney { text: shown(text) };
    let (mut negative, mut body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, text),
    };
    if let Some(rest) = body.strip_prefix("R$").or_else(|| body.strip_prefix("r$")) {
        body = rest.trim_start();
    }
    if !negative && let Some(rest) = body.strip_prefix('-') {
        negative = true;
        body = rest.trim_start();
    }
    if body.is_empty()
        || !body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    {
        return Err(not_money());
    }

    let (int, frac) = if let Some((int, frac)) = body.split_once(',') {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_money());
        }
        if frac.len() > 2 {
            return Err(MoneyError::TooManyDecimals { text: shown(text) });
        }
        (ungroup(int).ok_or_else(not_money)?, frac.to_string())
    } else if let Some((int, frac)) = body.split_once('.')
        && !frac.contains('.')
    {
        let int_ok = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit());
        match frac.len() {
            _ if !int_ok => return Err(not_money()),
            1 | 2 => (int.to_string(), frac.to_string()),
            3 if int.len() <= 3 => (format!("{int}{frac}"), String::new()),
            0 => return Err(not_money()),
            _ => return Err(MoneyError::TooManyDecimals { text: shown(text) }),
        }
    } else {
        (ungroup(body).ok_or_else(not_money)?, String::new())
    };

    let digits = format!("{int}{frac:0<2}");
    let magnitude =
        parse_magnitude(&digits).ok_or_else(|| MoneyError::OutOfRange { text: shown(text) })?;
    apply_sign(negative, magnitude).ok_or_else(|| MoneyError::OutOfRange { text: shown(text) })
}

/// Formats centavos as Brazilian money text: `R$ 1.234,56`, negatives as `-R$ 5,00`.
pub fn format_brl(centavos: i64) -> String {
    let abs = centavos.unsigned_abs();
    let reais = (abs / 100).to_string();
    let mut grouped = String::with_capacity(reais.len() + reais.len() / 3);
    for (i, c) in reais.chars().enumerate() {
        if i > 0 && (reais.len() - i).is_multiple_of(3) {
            grouped.push('.');
        }
        grouped.push(c);
    }
    let sign = if centavos < 0 { "-" } else { "" };
    format!("{sign}R$ {grouped},{:02}", abs % 100)
}

/// Removes thousands separators: `1.234.567` → `1234567`; `None` unless the groups after the
/// first have exactly 3 digits and the first has 1 to 3 (a plain digit run is also accepted).
fn ungroup(int: &str) -> Option<String> {
    let mut groups = int.split('.');
    let first = groups.next()?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest: Vec<&str> = groups.collect();
    if rest.is_empty() {
        return Some(first.to_string());
    }
    if first.len() > 3
        || !rest
            .iter()
            .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some(format!("{first}{}", rest.concat()))
}

/// Parses a run of ASCII digits (leading zeros allowed) as a non-negative `i64`.
fn parse_magnitude(digits: &str) -> Option<i64> {
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some(0);
    }
    trimmed.parse::<i64>().ok()
}

fn apply_sign(negative: bool, magnitude: i64) -> Option<i64> {
    if negative {
        magnitude.checked_neg()
    } else {
        Some(magnitude)
    }
}

/// Whether `text` looks like a JSON number (`-12.5e3`).
fn is_number_text(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

/// Converts the text of a JSON number in reais to centavos by decimal arithmetic on its digits,
/// rounding half away from zero. `None` when malformed or out of range.
fn number_text_to_centavos(text: &str) -> Option<i64> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => {
            let exp = &body[i + 1..];
            let exp = exp.strip_prefix('+').unwrap_or(exp);
            (&body[..i], exp.parse::<i64>().ok()?)
        }
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all = format!("{int}{frac}");
    // value = all × 10^(exponent - frac.len()); centavos = value × 100.
    let shift = exponent.checked_sub(frac.len() as i64)?.checked_add(2)?;
    let magnitude = if shift >= 0 {
        let significant = all.trim_start_matches('0');
        if significant.is_empty() {
            0
        } else if shift > 19 {
            return None;
        } else {
            parse_magnitude(&format!("{significant}{}", "0".repeat(shift as usize)))?
        }
    } else {
        let drop = usize::try_from(shift.unsigned_abs()).ok()?;
        if drop > all.len() + 1 {
            0
        } else {
            let padded = format!("{}{all}", "0".repeat(drop + 1 - all.len().min(drop + 1)));
            let (kept, dropped) = padded.split_at(padded.len() - drop);
            let base = parse_magnitude(kept)?;
            if dropped.as_bytes()[0] >= b'5' {
                base.checked_add(1)?
            } else {
                base
            }
        }
    };
    apply_sign(negative, magnitude)
}

/// The offending text as shown in an error, shortened so that a huge value cannot flood a log.
fn shown(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_numbers() {
        let cases = [
            (json!(99.9), 9990),
            (json!(100), 10000),
            (json!(0.1), 10),
            (json!(0.07), 7),
            (json!(1234.56), 123456),
            (json!(1234.565), 123457),
            (json!(1234.564), 123456),
            (json!(0.005), 1),
            (json!(0.004), 0),
            (json!(-0.005), -1),
            (json!(-5.5), -550),
            (json!(0), 0),
            (json!(0.0), 0),
            (json!(1e3), 100000),
            (json!(1.5e-3), 0),
            (json!(5e-3), 1),
            (json!(92233720368547758_i64), 9223372036854775800),
        ];
        for (v, want) in cases {
            assert_eq!(centavos_from_json(&v), Ok(want), "{v}");
        }
    }

    #[test]
    fn json_number_out_of_range() {
        assert!(matches!(
            centavos_from_json(&json!(1e300)),
            Err(MoneyError::OutOfRange { .. })
        ));
        assert!(matches!(
            centavos_from_json(&json!(u64::MAX)),
            Err(MoneyError::OutOfRange { .. })
        ));
        assert_eq!(centavos_from_json(&json!(1e-300)), Ok(0));
    }

    #[test]
    fn number_text_helper_edge_cases() {
        assert_eq!(number_text_to_centavos("1E+2"), Some(10000));
        assert_eq!(number_text_to_centavos("0.995"), Some(100));
        assert_eq!(number_text_to_centavos("12.3456e2"), Some(123456));
        assert_eq!(number_text_to_centavos("abc"), None);
        assert_eq!(number_text_to_centavos(".5"), None);
        assert_eq!(number_text_to_centavos("1e99999999999999999999"), None);
    }

    #[test]
    fn json_strings_and_other_types() {
        assert_eq!(centavos_from_json(&json!("R$ 1.234,56")), Ok(123456));
        assert_eq!(centavos_from_json(&json!("99.90")), Ok(9990));
        assert_eq!(centavos_from_json(&json!("")), Err(MoneyError::Empty));
        assert_eq!(
            centavos_from_json(&json!(null)),
            Err(MoneyError::NotANumber {
                text: "null".into()
            })
        );
        assert!(matches!(
            centavos_from_json(&json!([1])),
            Err(MoneyError::NotANumber { .. })
        ));
        assert!(matches!(
            centavos_from_json(&json!(true)),
            Err(MoneyError::NotANumber { .. })
        ));
    }

    #[test]
    fn brazilian_text() {
        let cases = [
            ("R$ 1.234,56", 123456),
            ("R$\u{a0}1.234,56", 123456),
            ("R$1.234,56", 123456),
            ("  1.234,56 ", 123456),
            ("99,9", 9990),
            ("99,90", 9990),
            ("99.90", 9990),
            ("99.9", 9990),
            ("1234", 123400),
            ("1.234", 123400),
            ("1.234.567", 123456700),
            ("1.234.567,89", 123456789),
            ("1234,56", 123456),
            ("0,05", 5),
            ("-5,00", -500),
            ("-R$ 5,00", -500),
            ("R$ -5,00", -500),
            ("-0,00", 0),
            ("r$ 10", 1000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_brl(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn brazilian_text_errors() {
        assert_eq!(parse_brl(""), Err(MoneyError::Empty));
        assert_eq!(parse_brl(" \u{a0} "), Err(MoneyError::Empty));
        for text in [
            "abc",
            "R$",
            "1,2,3",
            "12.34.56",
            "1.23,45",
            "12 34",
            "5,",
            "5.",
            ",50",
            "--5",
            "1.2a",
            "1234.567,00",
            "US$ 5",
            "5-",
        ] {
            assert!(
                matches!(parse_brl(text), Err(MoneyError::NotMoney { .. })),
                "{text}: {:?}",
                parse_brl(text)
            );
        }
        for text in ["1,234", "99,999", "1234.565", "1.2345"] {
            assert!(
                matches!(parse_brl(text), Err(MoneyError::TooManyDecimals { .. })),
                "{text}: {:?}",
                parse_brl(text)
            );
        }
        assert!(matches!(
            parse_brl("99999999999999999999"),
            Err(MoneyError::OutOfRange { .. })
        ));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            parse_brl("abc").unwrap_err().to_string(),
            "`abc` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`)"
        );
        assert_eq!(
            parse_brl("1,234").unwrap_err().to_string(),
            "`1,234` has more than 2 decimal places (expected e.g. `R$ 1.234,56` or `99.90`)"
        );
        let long = "x".repeat(500);
        let msg = parse_brl(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn formats() {
        assert_eq!(format_brl(123456), "R$ 1.234,56");
        assert_eq!(format_brl(0), "R$ 0,00");
        assert_eq!(format_brl(5), "R$ 0,05");
        assert_eq!(format_brl(-500), "-R$ 5,00");
        assert_eq!(format_brl(100000), "R$ 1.000,00");
        assert_eq!(format_brl(99999), "R$ 999,99");
        assert_eq!(format_brl(123456789), "R$ 1.234.567,89");
        assert_eq!(format_brl(i64::MIN), "-R$ 92.233.720.368.547.758,08");
    }

    #[test]
    fn format_parse_round_trip() {
        for c in [0, 1, 99, 100, 123456, -500, 987654321, i64::MAX] {
            assert_eq!(parse_brl(&format_brl(c)), Ok(c), "{c}");
        }
    }
}
