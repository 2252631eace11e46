//! Which servers the TLS clients trust, the same for HTTPS (`[tls] ca_file`) and SMTP
//! (`[smtp] ca_file`). A certificate listed in a `ca_file` and presented by the server as its
//! own is accepted as that server's: private servers present a self-signed certificate made by
//! `openssl req -x509`, which carries `CA:TRUE`, and rustls's WebPKI verifier refuses a CA as an
//! end entity (`CaUsedAsEndEntity`). Such a pinned certificate must still be valid now and name
//! the server (its subject alternative names; without any, its common name, as OpenSSL and
//! Python do), and the handshake must be signed by its key. Every other certificate goes to the
//! normal verifier: a chain to the system's CAs (when they are trusted) or to a `ca_file`'s.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

/// The certificates of a PEM file (`what` names its setting in messages, e.g. `[smtp] ca_file`).
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read `{what}` `{}`", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("`{what}` `{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "`{what}` `{}` holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The verifier: pinned certificates first, then the normal chain verification.
#[derive(Debug)]
pub struct PinningVerifier {
    pinned: Vec<CertificateDer<'static>>,
    normal: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl PinningVerifier {
    /// `certs` are a `ca_file`'s: each is trusted as a CA and, presented as the server's own
    /// certificate, as that server's. `system`: the system's CAs are trusted too.
    pub fn new(certs: Vec<CertificateDer<'static>>, system: bool) -> Result<PinningVerifier> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let normal: Arc<dyn ServerCertVerifier> = if system {
            Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    certs.clone(),
                    provider.clone(),
                )
                .context("cannot load the system's CA certificates (install the `ca-certificates` package, or set a `ca_file`)")?,
            )
        } else {
            let mut roots = RootCertStore::empty();
            for cert in &certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| anyhow!("a certificate cannot be trusted: {e}"))?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("cannot set up certificate verification")?
        };
        Ok(PinningVerifier {
            pinned: certs,
            normal,
            provider,
        })
    }

    /// A rustls client configuration with this verifier (TLS 1.2 and 1.3).
    pub fn client_config(self) -> Result<ClientConfig> {
        let provider = self.provider.clone();
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return self.normal.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let facts = der::facts(end_entity.as_ref())
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now = now.as_secs() as i64;
        if now < facts.not_before {
            return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        if now > facts.not_after {
            return Err(Error::InvalidCertificate(CertificateError::Expired));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        match tokio_rustls::rustls::client::verify_server_name(&parsed, server_name) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            // No subject alternative name at all: the common name names the server.
            Err(e) if facts.has_san => Err(e),
            Err(e) => match (&facts.common_name, server_name) {
                (Some(cn), ServerName::DnsName(dns)) if cn.eq_ignore_ascii_case(dns.as_ref()) => {
                    Ok(ServerCertVerified::assertion())
                }
                (Some(cn), ServerName::IpAddress(ip))
                    if cn.parse::<IpAddr>().ok() == Some(IpAddr::from(*ip)) =>
                {
                    Ok(ServerCertVerified::assertion())
                }
                _ => Err(e),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Just enough DER (X.690) to read what WebPKI does not tell: a certificate's validity, its
/// subject's common name and whether it has a subject alternative name extension.
mod der {
    /// What the pinned path needs of a certificate.
    pub struct Facts {
        pub not_before: i64,
        pub not_after: i64,
        pub common_name: Option<String>,
        pub has_san: bool,
    }

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    const VERSION: u8 = 0xA0;
    const EXTENSIONS: u8 = 0xA3;
    /// 2.5.4.3
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// 2.5.29.17
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];

    /// Reads one TLV from the front of `input`: (tag, value).
    fn next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        *input = after;
        Some((tag, value))
    }

    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
        let (t, value) = next(input)?;
        (t == tag).then_some(value)
    }

    fn time(input: &mut &[u8]) -> Option<i64> {
        let (tag, value) = next(input)?;
        let text = std::str::from_utf8(value).ok()?;
        let text = text.strip_suffix('Z')?;
        let full = match tag {
            // RFC 5280 §4.1.2.5.1: YY >= 50 is 19YY.
            UTC_TIME => {
                let yy: u32 = text.get(..2)?.parse().ok()?;
                format!("{}{text}", if yy >= 50 { "19" } else { "20" })
            }
            GENERALIZED_TIME => text.to_string(),
            _ => return None,
        };
        chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S")
            .ok()
            .map(|t| t.and_utc().timestamp())
    }

    fn common_name(mut name: &[u8]) -> Option<String> {
        while !name.is_empty() {
            let mut set = expect(&mut name, SET)?;
            while !set.is_empty() {
                let mut attribute = expect(&mut set, SEQUENCE)?;
                let oid = expect(&mut attribute, OID)?;
                let (_string_type, value) = next(&mut attribute)?;
                if oid == COMMON_NAME {
                    return std::str::from_utf8(value).ok().map(str::to_string);
                }
            }
        }
        None
    }

    fn has_san(mut extensions: &[u8]) -> Option<bool> {
        let mut list = expect(&mut extensions, SEQUENCE)?;
        while !list.is_empty() {
            let mut extension = expect(&mut list, SEQUENCE)?;
            if expect(&mut extension, OID)? == SUBJECT_ALT_NAME {
                return Some(true);
            }
        }
        Some(false)
    }

    /// The facts of a DER certificate; `None` when it does not parse.
    pub fn facts(der: &[u8]) -> Option<Facts> {
        let mut input = der;
        let mut certificate = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut certificate, SEQUENCE)?;
        if tbs.first() == Some(&VERSION) {
            next(&mut tbs)?;
        }
        next(&mut tbs)?; // serial number
        next(&mut tbs)?; // signature algorithm
        next(&mut tbs)?; // issuer
        let mut validity = expect(&mut tbs, SEQUENCE)?;
        let not_before = time(&mut validity)?;
        let not_after = time(&mut validity)?;
        let subject = expect(&mut tbs, SEQUENCE)?;
        next(&mut tbs)?; // subject public key info
        let mut has_san = false;
        while !tbs.is_empty() {
            let (tag, value) = next(&mut tbs)?;
            if tag == EXTENSIONS {
                has_san = self::has_san(value)?;
            }
        }
        Some(Facts {
            not_before,
            not_after,
            common_name: common_name(subject),
            has_san,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate as `openssl req -x509` makes it: self-signed, `CA:TRUE`; `names` become
    /// its subject alternative names (none: only the common name `cn`).
    fn openssl_style(cn: &str, names: &[&str], expired: bool) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verify(
        verifier: &PinningVerifier,
        cert: &CertificateDer<'static>,
        name: &str,
    ) -> Result<ServerCertVerified, Error> {
        verifier.verify_server_cert(
            cert,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn facts_of_a_certificate() {
        let cert = openssl_style("mail.example.com", &["mail.example.com"], true);
        let facts = der::facts(cert.as_ref()).unwrap();
        assert_eq!(facts.not_before, 1_577_836_800, "2020-01-01");
        assert_eq!(facts.not_after, 1_609_459_200, "2021-01-01");
        assert_eq!(facts.common_name.as_deref(), Some("mail.example.com"));
        assert!(facts.has_san);
        let cert = openssl_style("mail.example.com", &[], false);
        assert!(!der::facts(cert.as_ref()).unwrap().has_san);
        assert!(der::facts(&cert.as_ref()[..40]).is_none(), "truncated");
    }

    #[test]
    fn a_pinned_ca_true_certificate_is_the_servers_own_for_its_names_only() {
        let cert = openssl_style(
            "mail.example.com",
            &["mail.example.com", "127.0.0.1"],
            false,
        );
        // WebPKI alone refuses it as an end entity.
        let webpki = PinningVerifier::new(vec![cert.clone()], false).unwrap();
        let err = webpki
            .normal
            .verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from("mail.example.com").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(format!("{err:?}").contains("CaUsedAsEndEntity"), "{err:?}");
        // Pinned: accepted for its names, refused for another.
        assert!(verify(&webpki, &cert, "mail.example.com").is_ok());
        assert!(verify(&webpki, &cert, "MAIL.example.com").is_ok());
        assert!(verify(&webpki, &cert, "127.0.0.1").is_ok());
        let err = verify(&webpki, &cert, "other.example.com").unwrap_err();
        assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
        // Not pinned (another certificate listed): refused.
        let other = openssl_style("x", &["mail.example.com"], false);
        let not_pinned = PinningVerifier::new(vec![other], false).unwrap();
        assert!(verify(&not_pinned, &cert, "mail.example.com").is_err());
    }

    #[test]
    fn a_pinned_certificate_without_alternative_names_is_named_by_its_common_name() {
        let cert = openssl_style("mail.example.com", &[], false);
        let v = PinningVerifier::new(vec![cert.clone()], false).unwrap();
        assert!(verify(&v, &cert, "mail.example.com").is_ok());
        assert!(verify(&v, &cert, "example.com").is_err());
        // With alternative names, the common name does not count.
        let cert = openssl_style("mail.example.com", &["smtp.example.com"], false);
        let v = PinningVerifier::new(vec![cert.clone()], false).unwrap();
        assert!(verify(&v, &cert, "mail.example.com").is_err());
        assert!(verify(&v, &cert, "smtp.example.com").is_ok());
    }

    #[test]
    fn an_expired_pinned_certificate_is_refused() {
        let cert = openssl_style("mail.example.com", &["mail.example.com"], true);
        let v = PinningVerifier::new(vec![cert.clone()], false).unwrap();
        let err = verify(&v, &cert, "mail.example.com").unwrap_err();
        assert_eq!(err, Error::InvalidCertificate(CertificateError::Expired));
    }

    #[test]
    fn pem_files_are_read_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = openssl_style("a", &["a"], false);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.as_ref())
        );
        std::fs::write(dir.path().join("ok.pem"), &pem).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
        assert_eq!(
            read_pem(&dir.path().join("ok.pem"), "[smtp] ca_file").unwrap(),
            vec![cert]
        );
        let err = read_pem(&dir.path().join("empty.pem"), "[smtp] ca_file").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`[smtp] ca_file` `{}` holds no PEM certificate",
                dir.path().join("empty.pem").display()
            )
        );
        let err = read_pem(&dir.path().join("missing.pem"), "[tls] ca_file").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read `[tls] ca_file`"),
            "{err}"
        );
    }
}
