//! The sandbox: fakes of the outside world speaking the real protocols on 127.0.0.1, for the
//! tests, the demo, the benchmarks and `crm-jobs sandbox`. Each service lives under its own
//! path prefix of one HTTP server; faults (latency, error answers, resets, holds) are switched
//! from Rust (tests) or over HTTP under `/_sandbox/` (manual tries).

pub mod canopus;
pub mod crm;
pub mod faults;
pub mod nio;
pub mod pings;
pub mod scenario;
pub mod smtp;
pub mod stripe;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;

pub use canopus::{CanopusState, Dress, Misselect, SbBoleto, SbQuota};
pub use faults::{Fault, Faults, Route};
pub use nio::{NioState, PdfKind, SbDebt, SbInvoice};

/// The passphrase the sandbox's Nio site encrypts its params with, unless told otherwise.
pub const DEFAULT_PASSPHRASE: &str = "sandbox-nio-passphrase";

/// The SMTP sandbox's AUTH credentials.
pub const SMTP_USER: &str = "sandbox";
pub const SMTP_PASSWORD: &str = "sandbox-smtp-password";

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub nio: Arc<NioState>,
    pub canopus: Arc<CanopusState>,
    pub crm: Arc<crm::CrmState>,
    pub stripe: Arc<stripe::StripeState>,
    /// Health pings received under `/ping/`.
    pub pings: Arc<pings::PingsState>,
    /// The SMTP server (its own port), accepting [`SMTP_USER`] / [`SMTP_PASSWORD`].
    pub smtp: Arc<smtp::SmtpServer>,
    pub faults: Arc<Faults>,
    /// The same services over HTTPS, with a certificate of a test CA made at start.
    pub tls_addr: SocketAddr,
    tls_ca_pem: String,
    /// The same services over HTTPS, with a self-signed `CA:TRUE` certificate (`openssl req
    /// -x509` style).
    pub tls_self_signed_addr: SocketAddr,
    tls_self_signed_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sandbox {
    /// Starts the sandbox on its own thread and runtime, on `127.0.0.1:port` (0: any free port).
    pub fn start(passphrase: &str, port: u16) -> Result<Sandbox> {
        let faults = Arc::new(Faults::default());
        let nio = Arc::new(NioState::new(passphrase, faults.clone()));
        let canopus = Arc::new(CanopusState::new(faults.clone()));
        let crm = Arc::new(crm::CrmState::new(faults.clone()));
        let stripe = Arc::new(stripe::StripeState::new(faults.clone()));
        let pings = Arc::new(pings::PingsState::default());
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tls_ca_pem, tls_config) = tls::test_ca()?;
        let self_signed = tls::certificate(tls::CertStyle::SelfSigned)?;
        let https = || -> Result<(std::net::TcpListener, SocketAddr)> {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0))
                .context("cannot listen on 127.0.0.1 for HTTPS")?;
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            Ok((l, addr))
        };
        let (tls_listener, tls_addr) = https()?;
        let (self_signed_listener, tls_self_signed_addr) = https()?;
        let self_signed_config = self_signed.config;
        nio.set_self_url(&format!("http://{addr}"));
        let app = Router::new()
            .merge(nio::routes(nio.clone()))
            .merge(canopus::routes(canopus.clone()))
            .merge(crm::routes(crm.clone()))
            .merge(stripe::routes(stripe.clone()))
            .merge(pings::routes(pings.clone()))
            .merge(faults::routes(faults.clone()));
        let tls_app = app.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (smtp_tx, smtp_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sandbox".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("sandbox runtime");
                rt.block_on(async move {
                    let smtp = smtp::SmtpServer::start(0, SMTP_USER, SMTP_PASSWORD).await;
                    let ok = smtp.is_ok();
                    smtp_tx.send(smtp.map(Arc::new)).ok();
                    if !ok {
                        return;
                    }
                    for (listener, config) in [
                        (tls_listener, tls_config),
                        (self_signed_listener, self_signed_config),
                    ] {
                        let tls = tls::TlsListener {
                            tcp: tokio::net::TcpListener::from_std(listener).expect("listener"),
                            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                        };
                        tokio::spawn(axum::serve(tls, tls_app.clone()).into_future());
                    }
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            rx.await.ok();
                        })
                        .await
                        .ok();
                });
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
            })?;
        let smtp = smtp_rx
            .recv()
            .context("the sandbox thread ended before its SMTP server started")??;
        Ok(Sandbox {
            addr,
            nio,
            canopus,
            crm,
            stripe,
            pings,
            smtp,
            faults,
            tls_addr,
            tls_ca_pem,
            tls_self_signed_addr,
            tls_self_signed_pem: self_signed.trust_pem,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// A service's base URL over HTTPS, e.g. `tls_url("crm")`: trusted only with
    /// [`Sandbox::tls_ca_pem`] as `[tls] ca_file`.
    pub fn tls_url(&self, service: &str) -> String {
        format!("https://{}/{service}", self.tls_addr)
    }

    /// The PEM of the test CA that signed the HTTPS certificate.
    pub fn tls_ca_pem(&self) -> &str {
        &self.tls_ca_pem
    }

    /// A service's base URL over HTTPS with the self-signed `CA:TRUE` certificate: trusted only
    /// with [`Sandbox::tls_self_signed_pem`] (the certificate itself) as `[tls] ca_file`.
    pub fn tls_self_signed_url(&self, service: &str) -> String {
        format!("https://{}/{service}", self.tls_self_signed_addr)
    }

    /// The PEM of the self-signed HTTPS certificate.
    pub fn tls_self_signed_pem(&self) -> &str {
        &self.tls_self_signed_pem
    }

    /// The `[nio] base_url` to configure.
    pub fn nio_base_url(&self) -> String {
        format!("http://{}/nio", self.addr)
    }

    /// The `[canopus] base_url` to configure.
    pub fn canopus_base_url(&self) -> String {
        format!("http://{}/canopus", self.addr)
    }

    /// The `[crm] base_url` to configure.
    pub fn crm_base_url(&self) -> String {
        format!("http://{}/crm", self.addr)
    }

    /// The `[stripe] base_url` to configure.
    pub fn stripe_base_url(&self) -> String {
        format!("http://{}/stripe", self.addr)
    }

    /// The `[nio] pdf_url_template` that reaches the sandbox's PDFs.
    pub fn nio_pdf_template(&self) -> String {
        "{api}/debts/{debtId}/invoices/{invoiceId}/pdf".into()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.faults.release_all();
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// A small, valid one-page PDF naming `label`, padded with a comment stream to at least
/// `min_size` bytes (the real boletos weigh ~170 kB).
pub fn pdf(label: &str, min_size: usize) -> Vec<u8> {
    let text: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ' '))
        .collect();
    let content = format!("BT /F1 14 Tf 72 720 Td (Documento {text}) Tj ET");
    let padding = "0".repeat(min_size.saturating_sub(900));
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
        format!("<< /Length {} >>\nstream\n{padding}\nendstream", padding.len()),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}
