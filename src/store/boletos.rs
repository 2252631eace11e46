//! SQL of sales points (with their sealed portal credentials), consultants, clients and the
//! outcome of each boleto download.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::Store;

/// A sales point as listed (never with its password).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SalesPointRow {
    pub code: String,
    pub portal_user: Option<String>,
    pub has_password: bool,
    pub clients: i64,
    pub updated_at: String,
}

/// A client as imported from a spreadsheet.
pub struct ClientImport<'a> {
    pub cpf: &'a str,
    pub name: &'a str,
    pub raw_name: &'a str,
    pub consultant_id: i64,
    pub sales_point_id: Option<i64>,
    pub quota: Option<&'a str>,
    pub situacao: Option<&'a str>,
    pub value_centavos: Option<i64>,
    pub source: &'a str,
}

/// Which clients `download-boletos` takes.
pub struct BoletoSelection {
    pub sales_point: String,
    pub year: i32,
    pub month: u32,
    pub consultant: Option<String>,
    pub cpf: Option<String>,
    pub limit: Option<u32>,
}

/// A client to download boletos for.
#[derive(Debug, Clone)]
pub struct ClientWork {
    pub id: i64,
    pub cpf: String,
    pub name: String,
    pub consultant: String,
    pub folder: String,
}

/// The outcome of one client (and quota) for one month.
pub struct BoletoRecord<'a> {
    pub client_id: i64,
    pub year: i32,
    pub month: u32,
    pub quota: &'a str,
    pub outcome: super::BoletoOutcome,
    pub due_date: Option<&'a str>,
    pub value_centavos: Option<i64>,
    pub linha: Option<&'a str>,
    pub pdf_path: Option<&'a str>,
    pub pdf_sha256: Option<&'a str>,
    pub error: Option<&'a str>,
    pub run_id: i64,
    pub at: &'a str,
}

/// Who a saved file belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOwner {
    pub boleto_id: i64,
    pub client_id: i64,
    pub year: i32,
    pub month: u32,
    pub quota: String,
}

/// One exported boleto row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoletoExport {
    pub sales_point: Option<String>,
    pub consultant: String,
    pub cpf: String,
    pub client: String,
    pub year: i32,
    pub month: u32,
    pub quota: String,
    pub outcome: super::BoletoOutcome,
    pub due_date: Option<String>,
    pub value_centavos: Option<i64>,
    pub linha: Option<String>,
    pub pdf_path: Option<String>,
    pub pdf_sha256: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub attempted_at: String,
}

impl Store {
    /// Stores the portal credentials of a sales point (creating it if needed).
    pub fn set_credentials(
        &mut self,
        code: &str,
        user: &str,
        token: &str,
        now: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sales_points (code, portal_user, password_token, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (code) DO UPDATE SET portal_user = excluded.portal_user,
                    password_token = excluded.password_token, updated_at = excluded.updated_at",
            params![code, user, token, now],
        )?;
        Ok(())
    }

    /// The portal user and sealed password of a sales point.
    pub fn credentials(&self, code: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT portal_user, password_token FROM sales_points
                 WHERE code = ?1 AND portal_user IS NOT NULL AND password_token IS NOT NULL",
                [code],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Every sales point, with whether it has credentials.
    pub fn sales_points(&self) -> Result<Vec<SalesPointRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.code, s.portal_user, s.password_token IS NOT NULL,
                    (SELECT COUNT(*) FROM clients c WHERE c.sales_point_id = s.id), s.updated_at
             FROM sales_points s ORDER BY s.code",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SalesPointRow {
                    code: r.get(0)?,
                    portal_user: r.get(1)?,
                    has_password: r.get(2)?,
                    clients: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The id of a sales point, created on first sight.
    pub fn ensure_sales_point(&mut self, code: &str, now: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO sales_points (code, created_at, updated_at) VALUES (?1, ?2, ?2)
             ON CONFLICT (code) DO NOTHING",
            params![code, now],
        )?;
        Ok(self
            .conn
            .query_row("SELECT id FROM sales_points WHERE code = ?1", [code], |r| {
                r.get(0)
            })?)
    }

    /// The id of a consultant, created on first sight.
    pub fn ensure_consultant(&mut self, name: &str, folder: &str, now: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO consultants (name, folder, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![name, folder, now],
        )?;
        Ok(self
            .conn
            .query_row("SELECT id FROM consultants WHERE name = ?1", [name], |r| {
                r.get(0)
            })?)
    }

    /// Inserts or updates a client by CPF. Returns whether it is new.
    pub fn upsert_client(&mut self, c: &ClientImport, now: &str) -> Result<bool> {
        let existed: bool = self
            .conn
            .query_row("SELECT 1 FROM clients WHERE cpf = ?1", [c.cpf], |_| Ok(()))
            .optional()?
            .is_some();
        self.conn.execute(
            "INSERT INTO clients (cpf, name, raw_name, consultant_id, sales_point_id, quota, situacao,
                    value_centavos, source, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
             ON CONFLICT (cpf) DO UPDATE SET name = excluded.name, raw_name = excluded.raw_name,
                    consultant_id = excluded.consultant_id,
                    sales_point_id = COALESCE(excluded.sales_point_id, sales_point_id),
                    quota = excluded.quota, situacao = excluded.situacao,
                    value_centavos = excluded.value_centavos, source = excluded.source,
                    updated_at = excluded.updated_at",
            params![
                c.cpf,
                c.name,
                c.raw_name,
                c.consultant_id,
                c.sales_point_id,
                c.quota,
                c.situacao,
                c.value_centavos,
                c.source,
                now
            ],
        )?;
        Ok(!existed)
    }

    /// Clients of a sales point still to do for a month: not cancelled, and not already saved
    /// for that month (`cpf_not_found`, `no_boleto` and `error` are taken again: an
    /// installment may appear later in the month).
    pub fn clients_for_boletos(&self, sel: &BoletoSelection) -> Result<Vec<ClientWork>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.cpf, c.name, k.name, k.folder
             FROM clients c
             JOIN consultants k ON k.id = c.consultant_id
             JOIN sales_points s ON s.id = c.sales_point_id
             WHERE s.code = ?1
               AND (?4 IS NULL OR k.name = ?4)
               AND (?5 IS NULL OR c.cpf = ?5)
               AND (?5 IS NOT NULL OR COALESCE(c.situacao, '') <> 'cancelado')
               AND (?5 IS NOT NULL OR NOT EXISTS (
                     SELECT 1 FROM boletos b WHERE b.client_id = c.id AND b.year = ?2 AND b.month = ?3)
                   OR EXISTS (
                     SELECT 1 FROM boletos b WHERE b.client_id = c.id AND b.year = ?2 AND b.month = ?3
                       AND b.outcome <> 'success'))
             ORDER BY k.name, c.name, c.id
             LIMIT COALESCE(?6, -1)",
        )?;
        let rows = stmt
            .query_map(
                params![
                    sel.sales_point,
                    sel.year,
                    sel.month,
                    sel.consultant,
                    sel.cpf,
                    sel.limit
                ],
                |r| {
                    Ok(ClientWork {
                        id: r.get(0)?,
                        cpf: r.get(1)?,
                        name: r.get(2)?,
                        consultant: r.get(3)?,
                        folder: r.get(4)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The file of a client's quota for a month, if one was saved (or claimed before saving).
    pub fn boleto_file(
        &self,
        client_id: i64,
        year: i32,
        month: u32,
        quota: &str,
    ) -> Result<Option<(String, Option<String>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT pdf_path, pdf_sha256 FROM boletos
                 WHERE client_id = ?1 AND year = ?2 AND month = ?3 AND quota = ?4
                   AND pdf_path IS NOT NULL",
                params![client_id, year, month, quota],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The quotas of a client saved for a month, with their files.
    pub fn boletos_saved(
        &self,
        client_id: i64,
        year: i32,
        month: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT quota, pdf_path FROM boletos
             WHERE client_id = ?1 AND year = ?2 AND month = ?3 AND outcome = 'success'
               AND pdf_path IS NOT NULL",
        )?;
        let rows = stmt
            .query_map(params![client_id, year, month], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Claims a file name for a client's quota before the file is written (outcome `error`
    /// until the write is recorded), without counting an attempt.
    pub fn claim_boleto_path(&mut self, b: &BoletoRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO boletos (client_id, year, month, quota, outcome, pdf_path, error, attempts, run_id, attempted_at)
             VALUES (?1, ?2, ?3, ?4, 'error', ?5, ?6, 0, ?7, ?8)
             ON CONFLICT (client_id, year, month, quota) DO UPDATE SET
                    pdf_path = excluded.pdf_path, error = CASE WHEN outcome = 'success' THEN error ELSE excluded.error END",
            params![b.client_id, b.year, b.month, b.quota, b.pdf_path, b.error, b.run_id, b.at],
        )?;
        Ok(())
    }

    /// The latest download recorded (or claimed) under `path`, if any.
    pub fn file_owner(&self, path: &str) -> Result<Option<FileOwner>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, client_id, year, month, quota FROM boletos
                 WHERE pdf_path = ?1 ORDER BY attempted_at DESC LIMIT 1",
                [path],
                |r| {
                    Ok(FileOwner {
                        boleto_id: r.get(0)?,
                        client_id: r.get(1)?,
                        year: r.get(2)?,
                        month: r.get(3)?,
                        quota: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records that a file moved (an older year's boleto put aside).
    pub fn move_boleto_file(&mut self, boleto_id: i64, new_path: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE boletos SET pdf_path = ?2 WHERE id = ?1",
            params![boleto_id, new_path],
        )?;
        Ok(())
    }

    /// Records the outcome of a client (and quota) for a month. A client-level outcome replaces
    /// earlier client-level errors; quota rows replace the quota's earlier row.
    pub fn record_boleto(&mut self, b: &BoletoRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        if !b.quota.is_empty() {
            // The client was found this time: an earlier client-level row is obsolete.
            tx.execute(
                "DELETE FROM boletos WHERE client_id = ?1 AND year = ?2 AND month = ?3 AND quota = ''",
                params![b.client_id, b.year, b.month],
            )?;
        }
        tx.execute(
            "INSERT INTO boletos (client_id, year, month, quota, outcome, due_date, value_centavos,
                    linha, pdf_path, pdf_sha256, error, attempts, run_id, attempted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?13)
             ON CONFLICT (client_id, year, month, quota) DO UPDATE SET
                    outcome = excluded.outcome, due_date = excluded.due_date,
                    value_centavos = excluded.value_centavos, linha = excluded.linha,
                    pdf_path = COALESCE(excluded.pdf_path, pdf_path),
                    pdf_sha256 = COALESCE(excluded.pdf_sha256, pdf_sha256),
                    error = excluded.error, attempts = attempts + 1,
                    run_id = excluded.run_id, attempted_at = excluded.attempted_at",
            params![
                b.client_id,
                b.year,
                b.month,
                b.quota,
                b.outcome,
                b.due_date,
                b.value_centavos,
                b.linha,
                b.pdf_path,
                b.pdf_sha256,
                b.error,
                b.run_id,
                b.at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Boleto outcomes for export.
    pub fn export_boletos(
        &self,
        year: Option<i32>,
        month: Option<u32>,
        sales_point: Option<&str>,
        each: &mut dyn FnMut(BoletoExport) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT s.code, k.name, c.cpf, c.name, b.year, b.month, b.quota, b.outcome, b.due_date,
                    b.value_centavos, b.linha, b.pdf_path, b.pdf_sha256, b.error, b.attempts, b.attempted_at
             FROM boletos b JOIN clients c ON c.id = b.client_id
             JOIN consultants k ON k.id = c.consultant_id
             LEFT JOIN sales_points s ON s.id = c.sales_point_id
             WHERE (?1 IS NULL OR b.year = ?1) AND (?2 IS NULL OR b.month = ?2) AND (?3 IS NULL OR s.code = ?3)
             ORDER BY b.year, b.month, k.name, c.name, b.quota",
        )?;
        let mut rows = stmt.query(params![year, month, sales_point])?;
        while let Some(r) = rows.next()? {
            each(BoletoExport {
                sales_point: r.get(0)?,
                consultant: r.get(1)?,
                cpf: r.get(2)?,
                client: r.get(3)?,
                year: r.get(4)?,
                month: r.get(5)?,
                quota: r.get(6)?,
                outcome: r.get(7)?,
                due_date: r.get(8)?,
                value_centavos: r.get(9)?,
                linha: r.get(10)?,
                pdf_path: r.get(11)?,
                pdf_sha256: r.get(12)?,
                error: r.get(13)?,
                attempts: r.get(14)?,
                attempted_at: r.get(15)?,
            })?;
        }
        Ok(())
    }
}
