//! The expected invoices of a contract: when each of the ten invoices tracked for M-10/FPD is
//! due and from when it can be looked up, computed from the installation date.

use chrono::{Datelike, Days, Months, NaiveDate};

/// How many invoices of each contract are tracked (M-10).
pub const EXPECTED_INVOICES: u32 = 10;

/// The computed due date of invoice `n` (1..=10) of a contract installed on `installed`.
///
/// Invoice 1 is due 25 days after installation when the installation day is 1-28, else on day
/// 26 of the next month; invoice `n` is due `n - 1` months after invoice 1, clamped to the end
/// of a shorter month. `n = 0` is treated as 1. (An imported due date wins over this one; that is
/// the caller's choice.)
pub fn due_date(installed: NaiveDate, n: u32) -> NaiveDate {
    debug_assert!((1..=EXPECTED_INVOICES).contains(&n), "invoice number {n}");
    let first = if installed.day() <= 28 {
        installed + Days::new(25)
    } else {
        let next_month = installed.with_day(1).unwrap_or(installed) + Months::new(1);
        next_month.with_day(26).unwrap_or(next_month)
    };
    first
        .checked_add_months(Months::new(n.saturating_sub(1)))
        .unwrap_or(NaiveDate::MAX)
}

/// The day from which invoice `n` can be looked up: invoice 1 three days after installation,
/// the others three days before their due date `due` (computed or imported).
pub fn available_from(installed: NaiveDate, n: u32, due: NaiveDate) -> NaiveDate {
    if n <= 1 {
        installed + Days::new(3)
    } else {
        due - Days::new(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn day_1_to_28_is_25_days_later() {
        assert_eq!(due_date(date(2025, 3, 1), 1), date(2025, 3, 26));
        assert_eq!(due_date(date(2025, 3, 28), 1), date(2025, 4, 22));
        assert_eq!(due_date(date(2025, 2, 28), 1), date(2025, 3, 25));
        assert_eq!(due_date(date(2024, 2, 28), 1), date(2024, 3, 24));
    }

    #[test]
    fn day_29_to_31_is_day_26_of_next_month() {
        assert_eq!(due_date(date(2025, 3, 29), 1), date(2025, 4, 26));
        assert_eq!(due_date(date(2025, 3, 31), 1), date(2025, 4, 26));
        assert_eq!(due_date(date(2024, 2, 29), 1), date(2024, 3, 26));
        assert_eq!(due_date(date(2025, 1, 31), 1), date(2025, 2, 26));
    }

    #[test]
    fn crosses_the_year() {
        assert_eq!(due_date(date(2024, 12, 30), 1), date(2025, 1, 26));
        assert_eq!(due_date(date(2024, 12, 31), 2), date(2025, 2, 26));
        assert_eq!(due_date(date(2024, 12, 20), 1), date(2025, 1, 14));
        assert_eq!(due_date(date(2024, 12, 20), 10), date(2025, 10, 14));
    }

    #[test]
    fn later_invoices_count_months_from_invoice_1() {
        // Jan 5 + 25 days = Jan 30; Feb clamps to its end, March is back on the 30th.
        let installed = date(2025, 1, 5);
        assert_eq!(due_date(installed, 1), date(2025, 1, 30));
        assert_eq!(due_date(installed, 2), date(2025, 2, 28));
        assert_eq!(due_date(installed, 3), date(2025, 3, 30));
        assert_eq!(due_date(installed, 10), date(2025, 10, 30));
        // A leap year.
        assert_eq!(due_date(date(2024, 1, 6), 2), date(2024, 2, 29));
    }

    #[test]
    fn invoice_10() {
        assert_eq!(
            due_date(date(2025, 3, 1), EXPECTED_INVOICES),
            date(2025, 12, 26)
        );
        assert_eq!(due_date(date(2025, 3, 31), 10), date(2026, 1, 26));
        assert_eq!(due_date(date(2025, 6, 15), 10), date(2026, 4, 10));
    }

    #[test]
    fn all_ten_are_one_month_apart_and_increasing() {
        let installed = date(2025, 8, 29);
        let dues: Vec<_> = (1..=EXPECTED_INVOICES)
            .map(|n| due_date(installed, n))
            .collect();
        assert!(dues.windows(2).all(|w| w[0] < w[1]));
        assert!(dues.iter().all(|d| d.day() == 26));
    }

    #[test]
    fn availability() {
        let installed = date(2025, 3, 10);
        let due1 = due_date(installed, 1);
        assert_eq!(available_from(installed, 1, due1), date(2025, 3, 13));
        let due2 = due_date(installed, 2);
        assert_eq!(due2, date(2025, 5, 4));
        assert_eq!(available_from(installed, 2, due2), date(2025, 5, 1));
        // An imported due date is used as given.
        assert_eq!(
            available_from(installed, 5, date(2025, 3, 2)),
            date(2025, 2, 27)
        );
        // Invoice 1 ignores the due date.
        assert_eq!(
            available_from(installed, 1, date(2030, 1, 1)),
            date(2025, 3, 13)
        );
        // Crossing a year backwards.
        assert_eq!(
            available_from(installed, 3, date(2026, 1, 2)),
            date(2025, 12, 30)
        );
    }
}
