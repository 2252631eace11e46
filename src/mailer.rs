//! Sending the email outbox: over SMTP (RFC 5321, optional STARTTLS or implicit TLS, optional
//! AUTH; one connection for all of a run's messages, see [`client`]) or, in development, as
//! `.eml` files. SMTP has no idempotency: a connection lost once the data was being written may
//! come after the server took the message, so it is reported as an unknown outcome, never retried
//! by itself; one lost before cannot have delivered it.

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use tokio_rustls::rustls::pki_types::ServerName;

use crate::config::{SmtpConfig, SmtpMode, SmtpTls};
use crate::store::OutboxEmail;
use client::{Connection, OpenError, SendError, Settings, TlsMode};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The server refused it for now (4xx): it stays pending.
    Retry(String),
    /// It was not handed over: the server could not be used, or the connection broke before
    /// the data. It stays pending, and may go at once over a new connection.
    NotSent(String),
    /// The server refused it for good (5xx), or it cannot be built.
    Failed(String),
    /// No SMTP answer once the data was being written: it may have been delivered.
    Unknown(String),
}

/// Why the SMTP server cannot take messages now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It refused the credentials: a configuration failure (exit 78), not a passing one.
    Credentials(String),
    /// Down, refusing, TLS failing, an unexpected answer: the messages wait.
    Unavailable(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Credentials(m) | Unusable::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Where messages go.
pub enum Mailer {
    Smtp {
        settings: Box<Settings>,
        from: Mailbox,
        /// `[smtp] user`, for messages.
        user: String,
        /// The open connection, if any: reused by the next message.
        connection: Option<Connection>,
    },
    Eml {
        dir: PathBuf,
        from: Mailbox,
    },
}

/// Our name in EHLO: the machine's host name when it is a fully qualified one (strict servers
/// refuse a bare `vm`); else `None`, for the address literal of our end of the connection.
fn hello_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            h.contains('.')
                && !h.starts_with('.')
                && !h.ends_with('.')
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        })
}

impl Mailer {
    pub fn new(cfg: &SmtpConfig, password: Option<String>) -> Result<Mailer> {
        let from: Mailbox = cfg
            .from
            .parse()
            .with_context(|| format!("`[smtp] from` = `{}` is not an address", cfg.from))?;
        if cfg.mode == SmtpMode::Eml {
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
        let name = cfg.tls_server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            anyhow::anyhow!("`{name}` is not a host name the server's certificate can carry (`[smtp] host` or `tls_server_name`)")
        })?;
        // `[smtp] ca_file` set: only its certificates are trusted (as CAs, or as the server's
        // own); else the system's CAs. Read even without TLS: a bad file is said at once.
        let pinned = match &cfg.ca_file {
            Some(path) => Some(crate::tls::read_pem(path, "[smtp] ca_file")?),
            None => None,
        };
        let tls_config = match (cfg.tls, pinned) {
            (SmtpTls::None, _) => None,
            (_, Some(certs)) => Some(crate::tls::PinningVerifier::new(certs, false)?),
            (_, None) => Some(crate::tls::PinningVerifier::new(Vec::new(), true)?),
        }
        .map(|v| v.client_config().map(Arc::new))
        .transpose()?;
        let credentials = match &cfg.user {
            Some(user) => Some((
                user.clone(),
                password.context(
                    "`[smtp] user` is set but no password: export `CRM_JOBS_SMTP_PASSWORD` or set `[smtp] password_file`",
                )?,
            )),
            None => None,
        };
        Ok(Mailer::Smtp {
            settings: Box::new(Settings {
                host,
                port: cfg.port,
                tls: match cfg.tls {
                    SmtpTls::Tls => TlsMode::Implicit,
                    SmtpTls::Starttls => TlsMode::StartTls,
                    SmtpTls::None => TlsMode::None,
                },
                server_name,
                tls_config,
                credentials,
                timeout: Duration::from_secs(cfg.timeout_secs),
                hello: hello_name(),
            }),
            from,
            user: cfg.user.clone().unwrap_or_default(),
            connection: None,
        })
    }

    /// Opens the connection (connect, EHLO, TLS, AUTH) unless one is open and usable: when
    /// this fails, nothing can be handed over now.
    pub async fn connect(&mut self) -> Result<(), Unusable> {
        let Mailer::Smtp {
            settings,
            user,
            connection,
            ..
        } = self
        else {
            return Ok(());
        };
        if connection.as_ref().is_some_and(Connection::usable) {
            return Ok(());
        }
        if let Some(old) = connection.take() {
            old.quit().await;
        }
        let host = &settings.host;
        match Connection::open(settings).await {
            Ok(c) => {
                *connection = Some(c);
                Ok(())
            }
            Err(OpenError::Credentials(reply)) => Err(Unusable::Credentials(format!(
                "the SMTP server `{host}` refused the credentials of `[smtp] user` `{user}` ({reply}): check `CRM_JOBS_SMTP_PASSWORD` (or `[smtp] password_file`) and `[smtp] user`"
            ))),
            Err(OpenError::Unavailable(m)) => Err(Unusable::Unavailable(format!(
                "the SMTP server `{host}` cannot be used: {m}"
            ))),
        }
    }

    /// Whether the server is asked to check credentials (AUTH).
    pub fn authenticates(&self) -> bool {
        matches!(self, Mailer::Smtp { settings, .. } if settings.credentials.is_some())
    }

    /// Says QUIT on the open connection, if any.
    pub async fn close(&mut self) {
        if let Mailer::Smtp { connection, .. } = self
            && let Some(c) = connection.take()
        {
            c.quit().await;
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

    /// Sends one message, over the open connection (opened first if there is none).
    pub async fn send(&mut self, e: &OutboxEmail) -> Outcome {
        let message = match self.build(e) {
            Ok(m) => m,
            Err(m) => return Outcome::Failed(m),
        };
        if let Mailer::Eml { dir, .. } = self {
            let name = format!(
                "{}.eml",
                crate::files::safe_component(e.message_id.trim_matches(['<', '>']))
            );
            return match crate::files::write_atomic(dir, &name, &message.formatted()) {
                Ok(_) => Outcome::Sent,
                Err(err) => Outcome::Retry(format!("{err:#}")),
            };
        }
        if let Err(why) = self.connect().await {
            return Outcome::NotSent(why.to_string());
        }
        let Mailer::Smtp {
            connection: Some(connection),
            ..
        } = self
        else {
            return Outcome::NotSent("no connection to the SMTP server".into());
        };
        let envelope = message.envelope();
        let from = envelope.from().map(ToString::to_string).unwrap_or_default();
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        match connection.send(&from, &to, &message.formatted()).await {
            Ok(()) => Outcome::Sent,
            Err(SendError::Rejected(reply)) if reply.code >= 500 => {
                Outcome::Failed(format!("the SMTP server refused it: {reply}"))
            }
            Err(SendError::Rejected(reply)) => {
                Outcome::Retry(format!("the SMTP server deferred it: {reply}"))
            }
            Err(SendError::NotSent(m)) => Outcome::NotSent(format!(
                "the connection to the SMTP server broke before the message was handed over ({m})"
            )),
            Err(SendError::Unknown(m)) => Outcome::Unknown(format!(
                "the SMTP conversation broke without an answer ({m}): the message may have been delivered; not resent"
            )),
        }
    }
}
