//! `crm-jobs config check`: validates the configuration and prints the effective values, with
//! where they came from; secrets are only said to be set or not, never shown.

use anyhow::Result;

use super::Ctx;
use crate::exit::Code;

/// Configuration commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Code> {
    let Command::Check = command;
    let loaded = &ctx.loaded;
    let mut effective = loaded.config.clone();
    let store = ctx.store_path()?;
    effective.store.path = Some(store.clone());
    effective.downloads.dir = Some(loaded.downloads_dir(&store));
    // A secret file that cannot be read is an error; a secret not set at all is a warning
    // (this machine may only run jobs that do not need it).
    let passphrase = match crate::config::secret(
        "CRM_JOBS_NIO_PASSPHRASE",
        loaded.config.nio.passphrase_file.as_deref(),
    )
    .map_err(|e| crate::exit::CodedError::config(format!("{e:#}")))?
    {
        Some(_) => "set (redacted)",
        None => "NOT SET: export CRM_JOBS_NIO_PASSPHRASE or set [nio] passphrase_file",
    };
    let fernet = match crate::config::secret(
        "CRM_JOBS_FERNET_KEY",
        loaded.config.credentials.fernet_key_file.as_deref(),
    )
    .map_err(|e| crate::exit::CodedError::config(format!("{e:#}")))?
    {
        Some(key) => match crate::secret_box::SecretBox::new(&key) {
            Ok(_) => "set (redacted)".to_string(),
            Err(e) => return Err(crate::exit::CodedError::config(e.to_string())),
        },
        None => {
            "NOT SET: export CRM_JOBS_FERNET_KEY or set [credentials] fernet_key_file".to_string()
        }
    };
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::json!({
            "file": loaded.file.as_ref().map(|(p, why)| serde_json::json!({"path": p, "found_by": why})),
            "env_overrides": loaded.env_overrides,
            "config": effective,
            "secrets": {"CRM_JOBS_NIO_PASSPHRASE": passphrase, "CRM_JOBS_FERNET_KEY": fernet},
        }));
        return Ok(Code::Success);
    }
    match &loaded.file {
        Some((p, why)) => crate::outln!("# config file: {} (found by {why})", p.display()),
        None => crate::outln!("# config file: none found; defaults and environment only"),
    }
    for name in &loaded.env_overrides {
        crate::outln!("# overridden by the environment: {name}");
    }
    crate::outln!("# secrets: CRM_JOBS_NIO_PASSPHRASE {passphrase}");
    crate::outln!("# secrets: CRM_JOBS_FERNET_KEY {fernet}");
    for (env, file) in [
        (
            "CRM_JOBS_CRM_ACCESS_TOKEN",
            loaded.config.crm.access_token_file.as_deref(),
        ),
        (
            "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
            loaded.config.crm.secret_token_file.as_deref(),
        ),
        (
            "CRM_JOBS_STRIPE_SECRET_KEY",
            loaded.config.stripe.secret_key_file.as_deref(),
        ),
        (
            "CRM_JOBS_SMTP_PASSWORD",
            loaded.config.smtp.password_file.as_deref(),
        ),
    ] {
        let state = match crate::config::secret(env, file)
            .map_err(|e| crate::exit::CodedError::config(format!("{e:#}")))?
        {
            Some(_) => "set (redacted)",
            None => "not set",
        };
        crate::outln!("# secrets: {env} {state}");
    }
    if loaded.config.crm.base_url.is_none() {
        crate::outln!("# warning: [crm] base_url is not set; sync-queue needs it");
    }
    if loaded.config.nio.base_url.is_none() {
        crate::outln!("# warning: [nio] base_url is not set; fetch-invoices and retry need it");
    }
    if loaded.config.canopus.base_url.is_none() {
        crate::outln!("# warning: [canopus] base_url is not set; download-boletos needs it");
    }
    crate::outln!();
    crate::output::stdout(toml::to_string_pretty(&effective)?.as_bytes());
    ctx.printer.say("configuration is valid");
    Ok(Code::Success)
}
