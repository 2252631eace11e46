//! `crm-jobs credentials set|list`: the Canopus portal credentials of each sales point. The
//! password is read from the terminal (not echoed) or from stdin, and stored as a Fernet token
//! (key from `CRM_JOBS_FERNET_KEY` or a file), compatible with Python's `cryptography.fernet`.

use std::io::{BufRead, IsTerminal, Read};

use anyhow::{Context, Result};

use super::Ctx;
use crate::clock;
use crate::exit::{Code, CodedError};
use crate::secret_box::SecretBox;

/// Credential commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store the portal user and password of a sales point (the password is asked, not an argument).
    Set {
        /// Sales point, e.g. `17.308` (or `17308`).
        #[arg(long = "ponto-venda", value_name = "CODE")]
        ponto_venda: String,
        /// The portal user code, e.g. `24627` (padded with zeros when logging in).
        #[arg(long, value_name = "CODE")]
        usuario: String,
        /// Read the password from stdin (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the sales points and whether they have credentials (never a password).
    List,
}

/// A sales point code in the `17.308` form, from `17.308`, `17308` or `17308.0`.
pub fn sales_point_code(text: &str) -> Option<String> {
    let t = text.trim().trim_end_matches(".0");
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    // At most six digits, and a dot only before the last three: `17308`, `17.308`; not
    // `17.308.999` nor the 21 digits of a `1e20` cell.
    let well_placed = match t.split_once('.') {
        None => true,
        Some((head, tail)) => !head.is_empty() && tail.len() == 3 && !tail.contains('.'),
    };
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    if !well_placed || digits.len() > 6 {
        return None;
    }
    if digits.len() < 4 {
        return Some(digits);
    }
    let (head, tail) = digits.split_at(digits.len() - 3);
    Some(format!("{head}.{tail}"))
}

/// The Fernet sealer from `CRM_JOBS_FERNET_KEY` or `[credentials] fernet_key_file`.
pub fn sealer(ctx: &Ctx) -> Result<SecretBox> {
    let key = crate::config::secret(
        "CRM_JOBS_FERNET_KEY",
        ctx.loaded.config.credentials.fernet_key_file.as_deref(),
    )?
    .ok_or_else(|| {
        CodedError::config(
            "the Fernet key is not set: export `CRM_JOBS_FERNET_KEY` (make one with `python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`), or point `[credentials] fernet_key_file` to a file holding it",
        )
    })?;
    SecretBox::new(&key).map_err(|e| CodedError::config(e.to_string()))
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Code> {
    match command {
        Command::Set {
            ponto_venda,
            usuario,
            password_stdin,
        } => {
            let code = sales_point_code(&ponto_venda).ok_or_else(|| CodedError {
                code: Code::Usage,
                message: format!(
                    "`--ponto-venda {ponto_venda}` is not a sales point code (e.g. `17.308`)"
                ),
            })?;
            if usuario.trim().is_empty() || !usuario.trim().chars().all(|c| c.is_ascii_digit()) {
                return Err(CodedError {
                    code: Code::Usage,
                    message: format!(
                        "`--usuario {usuario}` is not a portal user code (digits, e.g. `24627`)"
                    ),
                }
                .into());
            }
            let sealer = sealer(ctx)?;
            let password = if password_stdin {
                // One line, at most 64 kB (the limit of a secret file): `/dev/zero` on stdin is
                // an error at once, not a process that grows until memory runs out.
                const LIMIT: u64 = 64 * 1024;
                let mut line = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(LIMIT + 1)
                    .read_until(b'\n', &mut line)
                    .context("cannot read the password from stdin")?;
                if line.len() as u64 > LIMIT {
                    anyhow::bail!(
                        "the password on stdin is longer than 64 kB: send one line, the password; nothing was stored"
                    );
                }
                let text = String::from_utf8(line).map_err(|_| {
                    anyhow::anyhow!("the password on stdin is not UTF-8 text; nothing was stored")
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            } else if std::io::stdin().is_terminal() {
                rpassword::prompt_password(format!(
                    "portal password for sales point {code}, user {usuario}: "
                ))
                .context("cannot read the password from the terminal")?
            } else {
                return Err(CodedError {
                    code: Code::Usage,
                    message: "no terminal to ask the password on: pass `--password-stdin` and send it on stdin".into(),
                }
                .into());
            };
            if password.is_empty() {
                return Err(CodedError {
                    code: Code::Usage,
                    message: "the password is empty".into(),
                }
                .into());
            }
            let mut store = ctx.open_store()?;
            store.set_credentials(
                &code,
                usuario.trim(),
                &sealer.encrypt(&password),
                &clock::to_store(ctx.clock.now()),
            )?;
            ctx.printer.say(&format!(
                "credentials of sales point {code} (user {}) stored, encrypted",
                usuario.trim()
            ));
            Ok(Code::Success)
        }
        Command::List => {
            let store = ctx.open_store()?;
            let points = store.sales_points()?;
            if ctx.printer.json {
                ctx.printer.json_out(&serde_json::to_value(&points)?);
            } else {
                crate::outln!("sales_point\tuser\tpassword\tclients\tupdated_at");
                for p in &points {
                    crate::outln!(
                        "{}\t{}\t{}\t{}\t{}",
                        p.code,
                        p.portal_user.as_deref().unwrap_or("-"),
                        if p.has_password {
                            "stored (encrypted)"
                        } else {
                            "none"
                        },
                        p.clients,
                        p.updated_at
                    );
                }
            }
            Ok(Code::Success)
        }
    }
}
