//! The sandbox over HTTPS: a test CA made at start, a certificate it signs for `127.0.0.1` and
//! `localhost`, and a listener that does the TLS handshake before axum sees the connection. A
//! client trusts it only when told to (`[tls] ca_file` = [`Sandbox::tls_ca_pem`]), which is how
//! the tests show that certificates are verified.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

/// A fresh test CA (its PEM) and a server configuration with a certificate it signed.
pub fn test_ca() -> Result<(String, ServerConfig)> {
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
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "crm-jobs sandbox");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .context("server certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
        .context("the sandbox's TLS configuration")?;
    Ok((ca_cert.pem(), config))
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
