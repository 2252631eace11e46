//! Matching a contract's expected invoices against the invoices Nio lists for the customer, and
//! reading Nio's date formats.

use chrono::NaiveDate;

/// An expected invoice of a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The invoice number, 1..=10.
    pub number: u32,
    /// The due date (imported or computed), if known.
    pub due_date: Option<NaiveDate>,
    /// The expected amount in centavos, if known.
    pub amount_centavos: Option<i64>,
}

/// An invoice from Nio's answer; the caller keeps its other fields by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The due date.
    pub due_date: NaiveDate,
    /// The amount in centavos, if Nio gave one.
    pub amount_centavos: Option<i64>,
}

/// The outcome of matching one expected invoice. Every outcome is an answer, not a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOutcome {
    /// Exactly one Nio invoice on the due date, with a compatible amount.
    Matched {
        /// Index of the match in the `found` slice.
        index: usize,
    },
    /// Two or more Nio invoices on the due date: nothing is applied.
    Ambiguous {
        /// How many were on that date.
        count: usize,
    },
    /// No Nio invoice on the due date (paid already, or not issued yet).
    NoMatch,
    /// One Nio invoice on the date but the amounts differ by more than the tolerance: nothing is
    /// applied.
    ValueMismatch {
        /// Index of the candidate in the `found` slice.
        index: usize,
        /// Expected amount in centavos.
        expected: i64,
        /// Nio's amount in centavos.
        found: i64,
    },
    /// The expected invoice has no due date to match on.
    NoDueDate,
}

impl MatchOutcome {
    /// The outcome's name as stored in the database: `matched`, `ambiguous`, `no_match`,
    /// `value_mismatch` or `no_due_date`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MatchOutcome::Matched { .. } => "matched",
            MatchOutcome::Ambiguous { .. } => "ambiguous",
            MatchOutcome::NoMatch => "no_match",
            MatchOutcome::ValueMismatch { .. } => "value_mismatch",
            MatchOutcome::NoDueDate => "no_due_date",
        }
    }
}

/// The largest difference between expected and found amounts that still matches (R$ 0,05).
pub const VALUE_TOLERANCE_CENTAVOS: i64 = 5;

/// Matches one expected invoice against Nio's invoices by same due date only. Two or more on the
/// date are ambiguous; exactly one matches unless both amounts are known and differ by more
/// than [`VALUE_TOLERANCE_CENTAVOS`].
pub fn match_invoice(expected: &Expected, found: &[Found]) -> MatchOutcome {
    let Some(due) = expected.due_date else {
        return MatchOutcome::NoDueDate;
    };
    let mut same_date = found.iter().enumerate().filter(|(_, f)| f.due_date == due);
    let Some((index, candidate)) = same_date.next() else {
        return MatchOutcome::NoMatch;
    };
    let others = same_date.count();
    if others > 0 {
        return MatchOutcome::Ambiguous { count: others + 1 };
    }
    match (expected.amount_centavos, candidate.amount_centavos) {
        (Some(e), Some(f)) if e.abs_diff(f) > VALUE_TOLERANCE_CENTAVOS.unsigned_abs() => {
            MatchOutcome::ValueMismatch {
                index,
                expected: e,
                found: f,
            }
        }
        _ => MatchOutcome::Matched { index },
    }
}

/// Parses a Nio date: `YYYYMMDD`, `YYYY-MM-DD`, or an ISO date-time (`YYYY-MM-DDTHH:MM:SS…`,
/// also with a space) whose date part is taken. Surrounding whitespace is ignored.
pub fn parse_nio_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    let b = s.as_bytes();
    let (y, m, d) = if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        (&s[0..4], &s[4..6], &s[6..8])
    } else if b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && (b.len() == 10 || matches!(b[10], b'T' | b't' | b' '))
    {
        (&s[0..4], &s[5..7], &s[8..10])
    } else {
        return None;
    };
    NaiveDate::from_ymd_opt(number(y)? as i32, number(m)?, number(d)?)
}

/// Parses a Nio reference month `YYYYMM` (also `YYYY-MM`) into (year, month).
pub fn parse_reference_month(s: &str) -> Option<(i32, u32)> {
    let s = s.trim();
    let (y, m) = match s.len() {
        6 => (s.get(0..4)?, s.get(4..6)?),
        7 if s.as_bytes()[4] == b'-' => (s.get(0..4)?, s.get(5..7)?),
        _ => return None,
    };
    let month = number(m)?;
    (1..=12)
        .contains(&month)
        .then_some((number(y)? as i32, month))
}

/// An all-ASCII-digit text as a number (no sign, no spaces).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn expected(due: Option<NaiveDate>, amount: Option<i64>) -> Expected {
        Expected {
            number: 1,
            due_date: due,
            amount_centavos: amount,
        }
    }

    fn found(due: NaiveDate, amount: Option<i64>) -> Found {
        Found {
            due_date: due,
            amount_centavos: amount,
        }
    }

    #[test]
    fn matches_the_single_invoice_on_the_date() {
        let d = date(2025, 5, 10);
        let list = [found(date(2025, 4, 10), Some(9990)), found(d, Some(9990))];
        assert_eq!(
            match_invoice(&expected(Some(d), Some(9990)), &list),
            MatchOutcome::Matched { index: 1 }
        );
    }

    #[test]
    fn tolerance_is_five_centavos_inclusive() {
        let d = date(2025, 5, 10);
        for (exp, got, outcome) in [
            (9990, 9995, MatchOutcome::Matched { index: 0 }),
            (9990, 9985, MatchOutcome::Matched { index: 0 }),
            (
                9990,
                9996,
                MatchOutcome::ValueMismatch {
                    index: 0,
                    expected: 9990,
                    found: 9996,
                },
            ),
            (
                9990,
                9984,
                MatchOutcome::ValueMismatch {
                    index: 0,
                    expected: 9990,
                    found: 9984,
                },
            ),
            (
                i64::MIN,
                i64::MAX,
                MatchOutcome::ValueMismatch {
                    index: 0,
                    expected: i64::MIN,
                    found: i64::MAX,
                },
            ),
        ] {
            assert_eq!(
                match_invoice(&expected(Some(d), Some(exp)), &[found(d, Some(got))]),
                outcome
            );
        }
    }

    #[test]
    fn unknown_amounts_match_on_date_alone() {
        let d = date(2025, 5, 10);
        assert_eq!(
            match_invoice(&expected(Some(d), None), &[found(d, Some(1))]),
            MatchOutcome::Matched { index: 0 }
        );
        assert_eq!(
            match_invoice(&expected(Some(d), Some(1)), &[found(d, None)]),
            MatchOutcome::Matched { index: 0 }
        );
        assert_eq!(
            match_invoice(&expected(Some(d), None), &[found(d, None)]),
            MatchOutcome::Matched { index: 0 }
        );
    }

    #[test]
    fn ambiguous_no_match_and_no_due_date() {
        let d = date(2025, 5, 10);
        let list = [
            found(d, Some(9990)),
            found(date(2025, 6, 10), None),
            found(d, Some(9990)),
            found(d, None),
        ];
        assert_eq!(
            match_invoice(&expected(Some(d), Some(9990)), &list),
            MatchOutcome::Ambiguous { count: 3 }
        );
        assert_eq!(
            match_invoice(&expected(Some(date(2025, 5, 11)), None), &list),
            MatchOutcome::NoMatch
        );
        assert_eq!(
            match_invoice(&expected(Some(d), None), &[]),
            MatchOutcome::NoMatch
        );
        assert_eq!(
            match_invoice(&expected(None, Some(9990)), &list),
            MatchOutcome::NoDueDate
        );
    }

    #[test]
    fn outcome_names() {
        assert_eq!(MatchOutcome::Matched { index: 0 }.as_str(), "matched");
        assert_eq!(MatchOutcome::Ambiguous { count: 2 }.as_str(), "ambiguous");
        assert_eq!(MatchOutcome::NoMatch.as_str(), "no_match");
        assert_eq!(
            MatchOutcome::ValueMismatch {
                index: 0,
                expected: 1,
                found: 2
            }
            .as_str(),
            "value_mismatch"
        );
        assert_eq!(MatchOutcome::NoDueDate.as_str(), "no_due_date");
    }

    #[test]
    fn nio_dates() {
        assert_eq!(parse_nio_date("20250115"), Some(date(2025, 1, 15)));
        assert_eq!(parse_nio_date("2025-01-15"), Some(date(2025, 1, 15)));
        assert_eq!(parse_nio_date(" 2025-01-15 "), Some(date(2025, 1, 15)));
        assert_eq!(
            parse_nio_date("2025-01-15T03:00:00.000Z"),
            Some(date(2025, 1, 15))
        );
        assert_eq!(
            parse_nio_date("2025-01-15 10:00:00"),
            Some(date(2025, 1, 15))
        );
        assert_eq!(parse_nio_date("20240229"), Some(date(2024, 2, 29)));
    }

    #[test]
    fn bad_nio_dates() {
        for s in [
            "",
            "2025011",
            "202501150",
            "20250230",
            "20251301",
            "2025-1-15",
            "2025/01/15",
            "15/01/2025",
            "2025-01-15X",
            "+2025-01-15",
            "2025-0a-15",
            "2025-01-1é",
            "2025é0115",
            "20230229",
        ] {
            assert_eq!(parse_nio_date(s), None, "{s}");
        }
    }

    #[test]
    fn reference_months() {
        assert_eq!(parse_reference_month("202501"), Some((2025, 1)));
        assert_eq!(parse_reference_month("202512"), Some((2025, 12)));
        assert_eq!(parse_reference_month("2025-03"), Some((2025, 3)));
        for s in [
            "", "202500", "202513", "20251", "2025011", "abcdef", "2025é", "2025/03", "+20251",
        ] {
            assert_eq!(parse_reference_month(s), None, "{s}");
        }
    }
}
