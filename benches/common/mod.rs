//! What every benchmark shares: the one machine-readable line per measured run that
//! `scripts/bench-table` gathers into the table of the README.

/// Prints `BENCH-ROW job|items|wall s|limit s|limit kind|peak MB` for the table.
pub fn row(job: &str, items: &str, wall: f64, limit: f64, kind: &str, peak_mb: f64) {
    println!("BENCH-ROW {job}|{items}|{wall:.2}|{limit:.2}|{kind}|{peak_mb:.1}");
}
