//! The states the store keeps, as enums: each is written to and read from its column as the
//! text its SQL `CHECK` allows (a test holds the two lists equal), so that Rust code matches on
//! variants instead of comparing strings, and a misspelt state does not compile.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Declares an enum stored as text: `as_str`, `ALL`, `Display`, `FromStr`, `ToSql`, `FromSql`
/// and `Serialize`, all from one list of `Variant = "text"`.
macro_rules! sql_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every state, in the order of the SQL `CHECK`.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the column.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "`{s}` is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                text.parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

sql_enum! {
    /// `runs.status`.
    RunStatus {
        Running = "running",
        Success = "success",
        Partial = "partial",
        Failed = "failed",
        Interrupted = "interrupted",
    }
}

sql_enum! {
    /// `invoices.fetch_status`: where the lookup of an expected invoice stands.
    FetchStatus {
        Pending = "pending",
        Success = "success",
        Error = "error",
        Partial = "partial",
        GaveUp = "gave_up",
    }
}

sql_enum! {
    /// `invoices.pdf_status`: the invoice's PDF, apart from the invoice (NULL: not tried yet).
    PdfStatus {
        Saved = "saved",
        Error = "error",
        GaveUp = "gave_up",
    }
}

sql_enum! {
    /// `invoices.payment_status`.
    PaymentStatus {
        Unknown = "unknown",
        Open = "open",
        Paid = "paid",
    }
}

sql_enum! {
    /// `invoices.match_outcome`: how an answer's invoice was matched to the expected one.
    #[derive(Default)]
    MatchState {
        Matched = "matched",
        Ambiguous = "ambiguous",
        #[default]
        NoMatch = "no_match",
        ValueMismatch = "value_mismatch",
        NoDueDate = "no_due_date",
    }
}

sql_enum! {
    /// `invoices.error_kind` and `invoices.pdf_error_kind`.
    ErrorKind {
        Transient = "transient",
        Permanent = "permanent",
    }
}

sql_enum! {
    /// `boletos.outcome`.
    BoletoOutcome {
        Success = "success",
        CpfNotFound = "cpf_not_found",
        NoBoleto = "no_boleto",
        Error = "error",
    }
}

sql_enum! {
    /// `sync_queue.action`.
    QueueAction {
        Create = "create",
        Update = "update",
        Delete = "delete",
        Upsert = "upsert",
    }
}

sql_enum! {
    /// `sync_queue.status`.
    QueueStatus {
        Pending = "pending",
        Processing = "processing",
        Done = "done",
        Failed = "failed",
        Superseded = "superseded",
    }
}

sql_enum! {
    /// `subscriptions.status`.
    SubscriptionStatus {
        Active = "active",
        Inactive = "inactive",
        Canceled = "canceled",
        PastDue = "past_due",
        Trialing = "trialing",
    }
}

sql_enum! {
    /// `payments.status`.
    PaymentRowStatus {
        Pending = "pending",
        Approved = "approved",
        Failed = "failed",
        Cancelled = "cancelled",
        Refunded = "refunded",
    }
}

sql_enum! {
    /// `email_outbox.status`.
    EmailStatus {
        Pending = "pending",
        Sending = "sending",
        Sent = "sent",
        Failed = "failed",
        Unknown = "unknown",
    }
}

impl From<&crate::domain::matching::MatchOutcome> for MatchState {
    fn from(m: &crate::domain::matching::MatchOutcome) -> MatchState {
        use crate::domain::matching::MatchOutcome as M;
        match m {
            M::Matched { .. } => MatchState::Matched,
            M::Ambiguous { .. } => MatchState::Ambiguous,
            M::NoMatch => MatchState::NoMatch,
            M::ValueMismatch { .. } => MatchState::ValueMismatch,
            M::NoDueDate => MatchState::NoDueDate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the schema's `CHECK (column IN (...))` allows for `table.column`, as the
    /// migrations leave it: read from the table's definition in a store brought up to date
    /// (SQLite keeps it whole there, columns added and tables renamed included).
    fn check_values(table: &str, column: &str) -> Vec<String> {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::MIGRATIONS.to_latest(&mut conn).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let needle = format!("CHECK ({column} IN (");
        let start = sql
            .find(&needle)
            .unwrap_or_else(|| panic!("no CHECK on {table}.{column} in {sql}"))
            + needle.len();
        let list = &sql[start..start + sql[start..].find(')').unwrap()];
        list.split(',')
            .map(|v| v.trim().trim_matches('\'').to_string())
            .collect()
    }

    fn texts(all: &[impl std::fmt::Display]) -> Vec<String> {
        all.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_enum_allows_what_its_sql_check_allows() {
        let cases: Vec<(&str, &str, Vec<String>)> = vec![
            ("runs", "status", texts(RunStatus::ALL)),
            ("invoices", "fetch_status", texts(FetchStatus::ALL)),
            ("invoices", "pdf_status", texts(PdfStatus::ALL)),
            ("invoices", "payment_status", texts(PaymentStatus::ALL)),
            ("invoices", "match_outcome", texts(MatchState::ALL)),
            ("invoices", "error_kind", texts(ErrorKind::ALL)),
            ("invoices", "pdf_error_kind", texts(ErrorKind::ALL)),
            ("boletos", "outcome", texts(BoletoOutcome::ALL)),
            ("sync_queue", "action", texts(QueueAction::ALL)),
            ("sync_queue", "status", texts(QueueStatus::ALL)),
            ("subscriptions", "status", texts(SubscriptionStatus::ALL)),
            ("payments", "status", texts(PaymentRowStatus::ALL)),
            ("email_outbox", "status", texts(EmailStatus::ALL)),
        ];
        for (table, column, ours) in cases {
            assert_eq!(check_values(table, column), ours, "{table}.{column}");
        }
    }

    #[test]
    fn a_state_reads_back_from_its_text_and_a_stranger_is_an_error() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let back: FetchStatus = conn
            .query_row("SELECT ?1", [FetchStatus::GaveUp], |r| r.get(0))
            .unwrap();
        assert_eq!(back, FetchStatus::GaveUp);
        let err = conn
            .query_row("SELECT 'given_up'", [], |r| r.get::<_, FetchStatus>(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`given_up` is not one of pending, success"),
            "{err}"
        );
        assert_eq!(format!("{:<8}|", PdfStatus::Saved), "saved   |");
    }
}
