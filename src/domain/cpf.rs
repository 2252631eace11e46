//! The CPF (a person's 11-digit Brazilian tax id): parsing from the forms operators and
//! spreadsheets use, check-digit validation, formatting and masking for logs.

use std::fmt;
use std::str::FromStr;

/// Why a text is not a valid CPF. Messages never contain the CPF itself, because they are shown
/// to operators and written to logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpfError {
    /// Nothing but whitespace.
    #[error("CPF is empty")]
    Empty,
    /// A character other than digits, dots, dashes and whitespace.
    #[error("CPF has characters other than digits, dots, dashes and spaces")]
    BadCharacters,
    /// Too many digits, or a punctuated CPF with too few (a typo, not lost zeros).
    #[error("CPF has {digits} digits, expected 11")]
    WrongLength {
        /// How many digits the text had.
        digits: usize,
    },
    /// `111.111.111-11` and the like pass the check digits but are not issued.
    #[error("CPF has all digits equal")]
    AllSameDigits,
    /// The last two digits are not the mod-11 check digits of the first nine.
    #[error("CPF check digits do not match (a typo?)")]
    CheckDigits,
    /// A bare number of fewer than 11 digits whose check digits fail even once padded with
    /// the leading zeros a spreadsheet drops.
    #[error(
        "CPF has {digits} digits, expected 11 (padded with the leading zeros a spreadsheet drops, its check digits do not match)"
    )]
    ShortNotValid {
        /// How many digits the text had.
        digits: usize,
    },
}

/// A valid CPF: exactly 11 ASCII digits with matching check digits.
///
/// `Display` prints the masked form (`708.***.***-36`) so that logging a CPF is safe by default;
/// use [`Cpf::digits`] or [`Cpf::formatted`] where the full number is needed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cpf(String);

impl Cpf {
    /// Parses a CPF as typed by people or exported by spreadsheets.
    ///
    /// Accepts `708.990.571-36`, `70899057136`, spaces, and a digit-only text of fewer digits
    /// (a spreadsheet stored the CPF as a number and dropped any number of leading zeros:
    /// `52395243` is `000.523.952-43`), also with a trailing `.0` (`7089905713.0`). The padded
    /// number is then checked like any other.
    pub fn parse(input: &str) -> Result<Cpf, CpfError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(CpfError::Empty);
        }
        // A spreadsheet cell holding the CPF as a number is often exported as `7089905713.0`.
        let text = match text.strip_suffix(".0") {
            Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => text,
        };
        let mut digits = String::with_capacity(11);
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else if !(c == '.' || c == '-' || c.is_whitespace()) {
                return Err(CpfError::BadCharacters);
            }
        }
        let count = digits.len();
        let only_digits = count == text.len();
        // Only a bare number can have lost its leading zeros (any number of them); a punctuated
        // CPF with fewer digits is a typo.
        if count == 0 || count > 11 || (count < 11 && !only_digits) {
            return Err(CpfError::WrongLength { digits: count });
        }
        let digits = format!("{digits:0>11}");
        let bytes = digits.as_bytes();
        if bytes.iter().all(|&b| b == bytes[0]) {
            return Err(CpfError::AllSameDigits);
        }
        let (d1, d2) = check_digits(&bytes[..9]);
        if bytes[9] - b'0' != d1 || bytes[10] - b'0' != d2 {
            return Err(if count < 11 {
                CpfError::ShortNotValid { digits: count }
            } else {
                CpfError::CheckDigits
            });
        }
        Ok(Cpf(digits))
    }

    /// Builds a valid CPF from a 9-digit base number (`base % 1_000_000_000`, left-padded with
    /// zeros) by appending its check digits. A base whose CPF would have all digits equal is
    /// bumped to the next one. Meant for sample data.
    pub fn from_base(base: u32) -> Cpf {
        let mut base = base % 1_000_000_000;
        loop {
            let head = format!("{base:09}");
            let (d1, d2) = check_digits(head.as_bytes());
            let digits = format!("{head}{d1}{d2}");
            let bytes = digits.as_bytes();
            if !bytes.iter().all(|&b| b == bytes[0]) {
                return Cpf(digits);
            }
            base = (base + 1) % 1_000_000_000;
        }
    }

    /// The 11 digits, e.g. `70899057136`.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The usual written form, e.g. `708.990.571-36`.
    pub fn formatted(&self) -> String {
        let d = &self.0;
        format!("{}.{}.{}-{}", &d[0..3], &d[3..6], &d[6..9], &d[9..11])
    }

    /// The form safe for logs, e.g. `708.***.***-36`.
    pub fn masked(&self) -> String {
        let d = &self.0;
        format!("{}.***.***-{}", &d[0..3], &d[9..11])
    }
}

/// Computes the two mod-11 check digits of the 9 ASCII digits in `head`.
fn check_digits(head: &[u8]) -> (u8, u8) {
    fn digit(sum: u32) -> u8 {
        let r = (sum * 10) % 11;
        if r == 10 { 0 } else { r as u8 }
    }
    let values: Vec<u32> = head.iter().map(|&b| u32::from(b - b'0')).collect();
    let sum1: u32 = values.iter().zip((2..=10).rev()).map(|(v, w)| v * w).sum();
    let d1 = digit(sum1);
    let sum2: u32 = values
        .iter()
        .chain(std::iter::once(&u32::from(d1)))
        .zip((2..=11).rev())
        .map(|(v, w)| v * w)
        .sum();
    (d1, digit(sum2))
}

/// Masked too, so that `{:?}` in a log line cannot leak a full CPF.
impl fmt::Debug for Cpf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cpf({})", self.masked())
    }
}

impl fmt::Display for Cpf {
    /// Prints the masked form, never the full number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for Cpf {
    type Err = CpfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cpf::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &str = "70899057136";

    #[test]
    fn parses_known_valid_in_all_forms() {
        for input in [
            "708.990.571-36",
            "70899057136",
            "  708.990.571-36\t",
            "708 990 571 36",
            "708990571-36",
        ] {
            let cpf = Cpf::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(cpf.digits(), KNOWN);
        }
    }

    #[test]
    fn pads_numbers_that_lost_leading_zeros() {
        let cpf = Cpf::from_base(8_990_571);
        assert!(cpf.digits().starts_with("00"));
        let nine = cpf.digits().trim_start_matches('0');
        assert_eq!(nine.len(), 9);
        assert_eq!(Cpf::parse(nine).unwrap(), cpf);
        assert_eq!(Cpf::parse(&format!("{nine}.0")).unwrap(), cpf);

        let cpf10 = Cpf::from_base(89_905_713);
        let ten = &cpf10.digits()[1..];
        assert_eq!(Cpf::parse(ten).unwrap(), cpf10);
        assert_eq!(Cpf::parse(&format!("{ten}.0")).unwrap(), cpf10);
        assert_eq!(Cpf::parse(&format!("0{ten}.0")).unwrap(), cpf10);

        // Any number of lost zeros: the known sheet's `52395243` is `000.523.952-43`.
        assert_eq!(
            Cpf::parse("52395243").unwrap().formatted(),
            "000.523.952-43"
        );
        assert_eq!(Cpf::parse("52395243.0").unwrap().digits(), "00052395243");
        let small = Cpf::from_base(1_234);
        let bare = small.digits().trim_start_matches('0');
        assert!(bare.len() <= 6, "{bare}");
        assert_eq!(Cpf::parse(bare).unwrap(), small);
    }

    #[test]
    fn float_text_with_eleven_digits() {
        assert_eq!(Cpf::parse("70899057136.0").unwrap().digits(), KNOWN);
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(Cpf::parse(""), Err(CpfError::Empty));
        assert_eq!(Cpf::parse("   "), Err(CpfError::Empty));
    }

    #[test]
    fn rejects_bad_characters() {
        for input in [
            "708.990.571-3a",
            "abc",
            "708/990/571-36",
            "7089905713,0",
            "+70899057136",
            "708_990_571_36",
        ] {
            assert_eq!(Cpf::parse(input), Err(CpfError::BadCharacters), "{input}");
        }
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert_eq!(
            Cpf::parse("708990571360"),
            Err(CpfError::WrongLength { digits: 12 })
        );
        // Eight digits is a number that lost three leading zeros: padded, then its check
        // digits decide (`70899057` -> `000.708.990-57` does not check).
        assert_eq!(
            Cpf::parse("70899057"),
            Err(CpfError::ShortNotValid { digits: 8 })
        );
        assert_eq!(
            CpfError::ShortNotValid { digits: 8 }.to_string(),
            "CPF has 8 digits, expected 11 (padded with the leading zeros a spreadsheet drops, its check digits do not match)"
        );
        assert_eq!(Cpf::parse(".-"), Err(CpfError::WrongLength { digits: 0 }));
        // Punctuated text with missing digits is a typo, not a lost leading zero.
        assert_eq!(
            Cpf::parse("08.990.571-36"),
            Err(CpfError::WrongLength { digits: 10 })
        );
        assert_eq!(
            Cpf::parse("7089905713.0.0"),
            Err(CpfError::WrongLength { digits: 12 })
        );
    }

    #[test]
    fn rejects_all_same_digits() {
        assert_eq!(Cpf::parse("111.111.111-11"), Err(CpfError::AllSameDigits));
        assert_eq!(Cpf::parse("00000000000"), Err(CpfError::AllSameDigits));
        // Nine zeros pad to eleven zeros.
        assert_eq!(Cpf::parse("000000000"), Err(CpfError::AllSameDigits));
    }

    #[test]
    fn rejects_wrong_check_digits() {
        assert_eq!(Cpf::parse("708.990.571-37"), Err(CpfError::CheckDigits));
        assert_eq!(Cpf::parse("708.990.571-46"), Err(CpfError::CheckDigits));
        assert_eq!(Cpf::parse("708.990.517-36"), Err(CpfError::CheckDigits));
    }

    #[test]
    fn formats_and_masks() {
        let cpf: Cpf = KNOWN.parse().unwrap();
        assert_eq!(cpf.formatted(), "708.990.571-36");
        assert_eq!(cpf.masked(), "708.***.***-36");
        assert_eq!(cpf.to_string(), "708.***.***-36");
        assert_eq!(format!("{cpf}"), cpf.masked());
    }

    #[test]
    fn error_messages_never_contain_the_cpf() {
        for input in [
            "708.990.571-37",
            "708990571360",
            "7089905713x",
            "111.111.111-11",
        ] {
            let msg = Cpf::parse(input).unwrap_err().to_string();
            assert!(!msg.contains("708990571"), "{msg}");
            assert!(!msg.contains("708.990"), "{msg}");
        }
        assert_eq!(
            CpfError::WrongLength { digits: 12 }.to_string(),
            "CPF has 12 digits, expected 11"
        );
    }

    #[test]
    fn from_base_round_trips() {
        for base in [
            0,
            1,
            111_111_111,
            708_990_571,
            999_999_999,
            4_000_000_123,
            12_345,
        ] {
            let cpf = Cpf::from_base(base);
            assert_eq!(cpf.digits().len(), 11);
            assert_eq!(Cpf::parse(cpf.digits()).unwrap(), cpf, "base {base}");
            assert_eq!(Cpf::parse(&cpf.formatted()).unwrap(), cpf);
        }
        assert_eq!(Cpf::from_base(708_990_571).digits(), KNOWN);
    }

    #[test]
    fn from_base_skips_all_same_digits() {
        assert_eq!(&Cpf::from_base(0).digits()[..9], "000000001");
        assert_eq!(&Cpf::from_base(111_111_111).digits()[..9], "111111112");
        assert_eq!(&Cpf::from_base(1_000_000_000).digits()[..9], "000000001");
    }
}
