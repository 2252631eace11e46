//! The sandbox's certificates and its HTTPS listener. Certificates are made both ways real
//! servers present them: a leaf signed by a test CA made at start (the CA's PEM is what a client
//! trusts), and a self-signed one as `openssl req -x509` makes it, which carries `CA:TRUE` (the
//! certificate itself is what an operator pins). A client trusts either only when told to
//! (`[tls] ca_file` or `[smtp] ca_file`), which is how the tests show that certificates are
//! verified.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

/// The names every sandbox certificate is valid for.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// How a server's certificate is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStyle {
    /// Self-signed with `CA:TRUE`, as `openssl req -x509` makes it (most private servers).
    SelfSigned,
    /// A leaf (`CA:FALSE`) signed by a test CA.
    SignedByTestCa,
}

/// A server certificate: the PEM a client must trust, and the server's TLS configuration.
pub struct Certified {
    pub trust_pem: String,
    pub config: ServerConfig,
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> Result<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // An explicit provider: with both `ring` and `aws-lc-rs` enabled somewhere in the
    // dependency graph, rustls cannot pick a process default and `builder()` would panic.
    ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the sandbox's TLS configuration")
}

/// A certificate for `127.0.0.1` and `localhost` made the given way.
pub fn certificate(style: CertStyle) -> Result<Certified> {
    match style {
        CertStyle::SelfSigned => {
            let key = rcgen::KeyPair::generate().context("server key")?;
            let mut params = rcgen::CertificateParams::new(NAMES.map(String::from).to_vec())?;
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "localhost");
            let cert = params
                .self_signed(&key)
                .context("self-signed certificate")?;
            Ok(Certified {
                trust_pem: cert.pem(),
                config: server_config(vec![cert.der().clone()], &key)?,
            })
        }
        CertStyle::SignedByTestCa => {
            let ca_key = rcgen::KeyPair::generate().context("test CA key")?;
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, "crm-jobs sandbox test CA");
            let ca_cert = ca.self_signed(&ca_key).context("test CA certificate")?;
            let issuer = rcgen::Issuer::new(ca, &ca_key);
            let leaf_key = rcgen::KeyPair::generate().context("server key")?;
            let mut leaf = rcgen::CertificateParams::new(NAMES.map(String::from).to_vec())?;
            leaf.distinguished_name
                .push(rcgen::DnType::CommonName, "crm-jobs sandbox");
            let leaf_cert = leaf
                .signed_by(&leaf_key, &issuer)
                .context("server certificate")?;
            Ok(Certified {
                trust_pem: ca_cert.pem(),
                config: server_config(
                    vec![leaf_cert.der().clone(), ca_cert.der().clone()],
                    &leaf_key,
                )?,
            })
        }
    }
}

/// A fresh test CA (its PEM) and a server configuration with a certificate it signed.
pub fn test_ca() -> Result<(String, ServerConfig)> {
    let c = certificate(CertStyle::SignedByTestCa)?;
    Ok((c.trust_pem, c.config))
}

/// Accepts TCP connections and hands axum only those whose TLS handshake succeeded (a client
/// that refuses the certificate just goes away).
pub struct TlsListener {
    pub tcp: TcpListener,
    pub acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
