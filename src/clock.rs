//! The clock: `CRM_JOBS_NOW` (RFC 3339) pins "now" for all date logic (tests, backfills);
//! otherwise the system clock. Business dates are taken in America/Sao_Paulo.

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::America::Sao_Paulo;

/// The source of "now" for one process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    fixed: Option<DateTime<Utc>>,
}

impl Clock {
    /// Reads `CRM_JOBS_NOW` once.
    pub fn from_env() -> Result<Self> {
        match std::env::var("CRM_JOBS_NOW") {
            Ok(text) if !text.trim().is_empty() => {
                let fixed = DateTime::parse_from_rfc3339(text.trim())
                    .with_context(|| {
                        format!("`CRM_JOBS_NOW={text}` is not an RFC 3339 instant (e.g. `2025-11-10T09:00:00-03:00`)")
                    })?
                    .with_timezone(&Utc);
                Ok(Clock { fixed: Some(fixed) })
            }
            _ => Ok(Clock { fixed: None }),
        }
    }

    /// The current instant in UTC.
    pub fn now(&self) -> DateTime<Utc> {
        self.fixed.unwrap_or_else(Utc::now)
    }

    /// Today's business date in America/Sao_Paulo.
    pub fn today(&self) -> NaiveDate {
        self.now().with_timezone(&Sao_Paulo).date_naive()
    }
}

/// Formats an instant the way the store keeps it: RFC 3339 UTC with milliseconds.
pub fn to_store(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an instant written by [`to_store`] (or any RFC 3339 text).
pub fn from_store(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
