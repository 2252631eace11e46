//! What the HTTP clients share: the client builder (trusting the system's CAs and those of
//! `[tls] ca_file`, a certificate of which a server may also present as its own: see
//! [`crate::tls`]), how a failed request is described to an operator, and how long a
//! `Retry-After` asks to wait.

use std::sync::OnceLock;

use anyhow::Result;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The certificates of `[tls] ca_file`, read once per process.
static EXTRA: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
/// The TLS configuration of every client, made at the first one (loading the system's CAs
/// costs a few milliseconds that commands without HTTPS need not pay); `None` when it cannot be
/// made.
static TLS: OnceLock<Option<tokio_rustls::rustls::ClientConfig>> = OnceLock::new();

/// Reads `[tls] ca_file` once per process; every client made with [`builder`] trusts its
/// certificates, besides the system's.
pub fn configure(tls: &crate::config::TlsConfig) -> Result<()> {
    let certs = match &tls.ca_file {
        Some(path) => crate::tls::read_pem(path, "[tls] ca_file")
            .map_err(|e| crate::exit::CodedError::config(format!("{e:#}")))?,
        None => Vec::new(),
    };
    EXTRA.set(certs).ok();
    Ok(())
}

/// A client builder that trusts the system's CAs and those of `[tls] ca_file` (once
/// [`configure`]d; before, reqwest's defaults).
pub fn builder() -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder();
    let Some(extra) = EXTRA.get() else {
        return b;
    };
    let config = TLS.get_or_init(|| {
        crate::tls::PinningVerifier::new(extra.clone(), true)
            .and_then(crate::tls::PinningVerifier::client_config)
            .inspect_err(|e| tracing::warn!("{e:#}"))
            .ok()
    });
    match config {
        Some(config) => b.tls_backend_preconfigured(config.clone()),
        // No system CA and no `[tls] ca_file`: reqwest's own verifier refuses as well, and
        // its error says why.
        None => b,
    }
}

/// Everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) is encoded in a
/// path segment: `/`, `?`, `#` and `%` above all, so that an id can never leave its segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An id made into one URL path segment, percent-encoded; `None` for an empty id, `.` or `..`
/// (which a URL parser would turn into a step up the path).
pub fn path_segment(id: &str) -> Option<String> {
    if matches!(id, "" | "." | "..") {
        return None;
    }
    Some(percent_encoding::utf8_percent_encode(id, SEGMENT).to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_stays_in_its_path_segment() {
        assert_eq!(
            path_segment("../../v1/customers?x=1#").as_deref(),
            Some("..%2F..%2Fv1%2Fcustomers%3Fx%3D1%23")
        );
        assert_eq!(path_segment("sub_1QxYz").as_deref(), Some("sub_1QxYz"));
        assert_eq!(path_segment("a b%2F").as_deref(), Some("a%20b%252F"));
        assert_eq!(path_segment("ção").as_deref(), Some("%C3%A7%C3%A3o"));
        for bad in ["", ".", ".."] {
            assert_eq!(path_segment(bad), None, "{bad:?}");
        }
        // What reqwest sends: the path as encoded, one segment.
        let url = reqwest::Url::parse(&format!(
            "http://127.0.0.1/v1/subscriptions/{}",
            path_segment("../../v1/customers?x=1#").unwrap()
        ))
        .unwrap();
        assert_eq!(
            url.path(),
            "/v1/subscriptions/..%2F..%2Fv1%2Fcustomers%3Fx%3D1%23"
        );
        assert_eq!((url.query(), url.fragment()), (None, None));
    }
}
