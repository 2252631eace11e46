//! Sending the email outbox: over SMTP (RFC 5321, optional STARTTLS or implicit TLS, optional
//! AUTH) or, in development, as `.eml` files. SMTP has no idempotency: an error without an SMTP
//! status may come after the server took the message, so it is reported as an unknown outcome,
//! never retried by itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpConfig;
use crate::store::OutboxEmail;

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The server refused it for now (4xx): it stays pending.
    Retry(String),
    /// The server refused it for good (5xx), or it cannot be built.
    Failed(String),
    /// No SMTP answer: it may have been delivered.
    Unknown(String),
}

/// Where messages go.
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        host: String,
    },
    Eml {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl Mailer {
    pub fn new(cfg: &SmtpConfig, password: Option<String>) -> Result<Mailer> {
        let from: Mailbox = cfg
            .from
            .parse()
            .with_context(|| format!("`[smtp] from` = `{}` is not an address", cfg.from))?;
        if cfg.mode == "eml" {
            let dir = cfg
                .eml_dir
                .clone()
                .context("`[smtp] mode = \"eml\"` needs `[smtp] eml_dir`")?;
            return Ok(Mailer::Eml { dir, from });
        }
        let host = cfg
            .host
            .clone()
            .context("`[smtp] host` is not set: set it in the config file or `CRM_JOBS_SMTP_HOST` (or `[smtp] mode = \"eml\"` to write files)")?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(cfg.port)
            .timeout(Some(Duration::from_secs(cfg.timeout_secs)));
        if cfg.tls != "none" {
            let name = cfg.tls_server_name.clone().unwrap_or_else(|| host.clone());
            let mut params = TlsParameters::builder(name);
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read `[smtp] ca_file` `{}`", ca.display()))?;
                params =
                    params
                        .certificate_store(CertificateStore::None)
                        .add_root_certificate(Certificate::from_pem(&pem).with_context(|| {
                            format!("`{}` is not a PEM certificate", ca.display())
                        })?);
            }
            let params = params
                .build_rustls()
                .context("cannot set up TLS for SMTP")?;
            builder = builder.tls(if cfg.tls == "tls" {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            });
        }
        if let Some(user) = &cfg.user {
            let password = password.context(
                "`[smtp] user` is set but no password: export `CRM_JOBS_SMTP_PASSWORD` or set `[smtp] password_file`",
            )?;
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer::Smtp {
            transport: builder.build(),
            from,
            host,
        })
    }

    /// Whether the server answers (connect, EHLO, TLS, AUTH): when it does not, nothing is
    /// handed over and every message waits.
    pub async fn reachable(&self) -> Result<(), String> {
        match self {
            Mailer::Eml { .. } => Ok(()),
            Mailer::Smtp {
                transport, host, ..
            } => match transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("the SMTP server `{host}` did not answer")),
                Err(e) => Err(format!("the SMTP server `{host}` cannot be used: {e}")),
            },
        }
    }

    fn build(&self, e: &OutboxEmail) -> Result<Message, String> {
        let from = match self {
            Mailer::Smtp { from, .. } | Mailer::Eml { from, .. } => from.clone(),
        };
        let to: Mailbox =
            e.to.parse()
                .map_err(|_| format!("`{}` is not an email address", e.to))?;
        Message::builder()
            .message_id(Some(e.message_id.clone()))
            .from(from)
            .to(to)
            .subject(e.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                e.text.clone(),
                e.html.clone(),
            ))
            .map_err(|err| format!("cannot build the message: {err}"))
    }

    /// Sends one message.
    pub async fn send(&self, e: &OutboxEmail) -> Outcome {
        let message = match self.build(e) {
            Ok(m) => m,
            Err(m) => return Outcome::Failed(m),
        };
        match self {
            Mailer::Eml { dir, .. } => {
                let name = format!(
                    "{}.eml",
                    crate::files::safe_component(e.message_id.trim_matches(['<', '>']))
                );
                match crate::files::write_atomic(dir, &name, &message.formatted()) {
                    Ok(_) => Outcome::Sent,
                    Err(err) => Outcome::Retry(format!("{err:#}")),
                }
            }
            Mailer::Smtp { transport, .. } => match transport.send(message).await {
                Ok(_) => Outcome::Sent,
                Err(err) if err.is_permanent() => {
                    Outcome::Failed(format!("the SMTP server refused it: {err}"))
                }
                Err(err) if err.is_transient() => {
                    Outcome::Retry(format!("the SMTP server deferred it: {err}"))
                }
                Err(err) => Outcome::Unknown(format!(
                    "the SMTP conversation broke without an answer ({err}): the message may have been delivered; not resent"
                )),
            },
        }
    }
}
