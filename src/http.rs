//! What the HTTP clients share: the client builder (with the CAs of `[tls] ca_file`) and how a
//! failed request is described to an operator.

use std::sync::OnceLock;

use anyhow::Result;

static EXTRA_CAS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Reads `[tls] ca_file` once per process; its certificates are trusted by every client made
/// with [`builder`], besides the system's.
pub fn configure(tls: &crate::config::TlsConfig) -> Result<()> {
    let mut certs = Vec::new();
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            crate::exit::CodedError::config(format!(
                "cannot read `[tls] ca_file` `{}`: {e}",
                path.display()
            ))
        })?;
        certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                crate::exit::CodedError::config(format!(
                    "`[tls] ca_file` `{}` holds no PEM certificate",
                    path.display()
                ))
            })?;
    }
    EXTRA_CAS.set(certs).ok();
    Ok(())
}

/// A client builder that trusts the system's CAs and those of `[tls] ca_file`.
pub fn builder() -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder();
    match EXTRA_CAS.get() {
        Some(certs) if !certs.is_empty() => b.tls_certs_merge(certs.iter().cloned()),
        _ => b,
    }
}

/// Whether a failed request failed on the server's certificate.
fn certificate_problem(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("certificate") || m.contains("unknownissuer") || m.contains("invalid peer")
}

/// `request to the {service} timed out: …causes…`, one line with every cause.
pub fn describe_error(e: &reqwest::Error, service: &str) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut message = format!("request to the {service} {what}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    if certificate_problem(&message) {
        message.push_str(
            " (the server's TLS certificate is not trusted: if it is signed by a CA of your own, put that CA's PEM in `[tls] ca_file`)",
        );
    }
    message
}
