//! `crm-jobs doctor`: checks what the jobs need before they need it: the configuration and its
//! secrets, the store, file permissions and free space, and for each configured service its
//! name, its TLS and that it answers; stored credentials decrypt. Each finding says what to do.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::exit::Code;

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the network checks (name resolution, TLS, answers).
    #[arg(long)]
    pub offline: bool,
}

#[derive(serde::Serialize)]
struct Finding {
    check: String,
    level: &'static str,
    message: String,
}

struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &str, level: &'static str, message: impl Into<String>) {
        self.0.push(Finding {
            check: check.into(),
            level,
            message: message.into(),
        });
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config;
    let mut r = Report(Vec::new());
    match &ctx.loaded.file {
        Some((p, why)) => r.add(
            "config",
            "ok",
            format!("`{}` (found by {why}) is valid", p.display()),
        ),
        None => r.add(
            "config",
            "warn",
            "no config file: defaults and environment only; write one from config.example.toml",
        ),
    }
    // Secrets: each job that needs one says so.
    for (env, file, jobs) in [
        (
            "CRM_JOBS_NIO_PASSPHRASE",
            cfg.nio.passphrase_file.as_deref(),
            "fetch-invoices, retry",
        ),
        (
            "CRM_JOBS_FERNET_KEY",
            cfg.credentials.fernet_key_file.as_deref(),
            "download-boletos, credentials",
        ),
        (
            "CRM_JOBS_CRM_ACCESS_TOKEN",
            cfg.crm.access_token_file.as_deref(),
            "sync-queue",
        ),
        (
            "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
            cfg.crm.secret_token_file.as_deref(),
            "sync-queue",
        ),
        (
            "CRM_JOBS_STRIPE_SECRET_KEY",
            cfg.stripe.secret_key_file.as_deref(),
            "renew --step stripe",
        ),
        (
            "CRM_JOBS_SMTP_PASSWORD",
            if cfg.smtp.user.is_some() {
                cfg.smtp.password_file.as_deref()
            } else {
                None
            },
            "renew --step emails (with `[smtp] user` set)",
        ),
    ] {
        if env == "CRM_JOBS_SMTP_PASSWORD" && cfg.smtp.user.is_none() {
            continue;
        }
        match crate::config::secret(env, file) {
            Ok(Some(_)) => r.add("secrets", "ok", format!("`{env}` is set")),
            Ok(None) => r.add("secrets", "warn", format!("`{env}` is not set: {jobs} will refuse to start (export it or set its `*_file` key)")),
            Err(e) => r.add("secrets", "fail", format!("`{env}`: {e:#}")),
        }
    }
    // The store: opens, is sound, is private.
    let store_path = ctx.store_path()?;
    // doctor changes nothing: a store that does not exist yet is not created here.
    let store_missing = !store_path.exists();
    if store_missing {
        r.add(
            "store",
            "warn",
            format!(
                "`{}` does not exist yet: the first job run creates it ({})",
                store_path.display(),
                nearest_writable(&store_path)
            ),
        );
    }
    match (!store_missing)
        .then(|| crate::store::Store::open(&store_path))
        .transpose()
    {
        Ok(None) => {}
        Ok(Some(store)) => {
            match store.integrity_check() {
                Ok(ok) if ok == "ok" => r.add(
                    "store",
                    "ok",
                    format!(
                        "`{}` opens and passes its integrity check",
                        store_path.display()
                    ),
                ),
                Ok(other) => r.add(
                    "store",
                    "fail",
                    format!(
                        "`{}` fails its integrity check ({other}): restore a backup",
                        store_path.display()
                    ),
                ),
                Err(e) => r.add("store", "fail", format!("{e:#}")),
            }
            private(&mut r, &store_path, 0o600);
            // Stored credentials decrypt with the key in force.
            if let Ok(Some(key)) = crate::config::secret(
                "CRM_JOBS_FERNET_KEY",
                cfg.credentials.fernet_key_file.as_deref(),
            ) {
                match crate::secret_box::SecretBox::new(&key) {
                    Ok(sealer) => {
                        for p in store.sales_points()?.into_iter().filter(|p| p.has_password) {
                            let ok = store
                                .credentials(&p.code)?
                                .is_some_and(|(_, t)| sealer.decrypt(&t).is_ok());
                            if ok {
                                r.add(
                                    "credentials",
                                    "ok",
                                    format!("sales point {}: the password decrypts", p.code),
                                );
                            } else {
                                r.add("credentials", "fail", format!("sales point {}: the stored password does not decrypt with this Fernet key: fix `CRM_JOBS_FERNET_KEY` or run `crm-jobs credentials set --ponto-venda {}` again", p.code, p.code));
                            }
                        }
                    }
                    Err(e) => r.add("credentials", "fail", e.to_string()),
                }
            }
        }
        Err(e) => r.add("store", "fail", format!("{e:#}")),
    }
    // The downloads folder: a folder, writable, with room.
    let downloads = ctx.downloads_dir()?;
    if !downloads.exists() {
        r.add(
            "downloads",
            "warn",
            format!(
                "`{}` does not exist yet: the first download creates it ({})",
                downloads.display(),
                nearest_writable(&downloads)
            ),
        );
    } else if !downloads.is_dir() {
        r.add(
            "downloads",
            "fail",
            format!(
                "`{}` is not a folder: point `[downloads] dir` to a folder",
                downloads.display()
            ),
        );
    } else {
        match tempfile::tempfile_in(&downloads).map(|_| ()) {
            Ok(()) => {
                r.add(
                    "downloads",
                    "ok",
                    format!("`{}` is writable", downloads.display()),
                );
                if let Some(free) = free_bytes(&downloads) {
                    let mb = free / (1024 * 1024);
                    let level = if mb < 500 { "warn" } else { "ok" };
                    r.add(
                        "downloads",
                        level,
                        format!(
                            "{mb} MB free in `{}`{}",
                            downloads.display(),
                            if mb < 500 {
                                ": boletos weigh ~170 kB each; free some space"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
            Err(e) => r.add(
                "downloads",
                "fail",
                format!("cannot write in `{}`: {e}", downloads.display()),
            ),
        }
    }
    // CA certificates for TLS to the real services.
    if !Path::new("/etc/ssl/certs/ca-certificates.crt").exists()
        && !Path::new("/etc/pki/tls/certs/ca-bundle.crt").exists()
    {
        r.add("tls", "warn", "no system CA bundle found: install the `ca-certificates` package, or HTTPS services will be refused");
    }
    if !args.offline {
        for (name, url) in [
            ("nio", cfg.nio.base_url.as_deref()),
            ("canopus", cfg.canopus.base_url.as_deref()),
            ("crm", cfg.crm.base_url.as_deref()),
            ("stripe", cfg.stripe.base_url.as_deref()),
        ] {
            let Some(url) = url else { continue };
            reach(&mut r, name, url).await;
        }
        // SMTP: the same conversation `renew` starts (connect, EHLO, TLS, AUTH), no message.
        if cfg.smtp.mode == crate::config::SmtpMode::Smtp
            && let Some(host) = &cfg.smtp.host
        {
            let password = match cfg.smtp.user {
                Some(_) => crate::config::secret(
                    "CRM_JOBS_SMTP_PASSWORD",
                    cfg.smtp.password_file.as_deref(),
                )
                .ok()
                .flatten(),
                None => None,
            };
            let at = format!("{host}:{}", cfg.smtp.port);
            match crate::mailer::Mailer::new(&cfg.smtp, password) {
                Ok(mut mailer) => {
                    let answer = mailer.connect().await;
                    mailer.close().await;
                    match answer {
                        Ok(()) => r.add(
                            "smtp",
                            "ok",
                            format!(
                                "`{at}` answers (EHLO, TLS `{}`, AUTH when a user is set)",
                                cfg.smtp.tls.as_str()
                            ),
                        ),
                        Err(e @ crate::mailer::Unusable::Credentials(_)) => {
                            r.add("smtp", "fail", e.to_string());
                        }
                        Err(e) => r.add(
                            "smtp",
                            "fail",
                            format!(
                                "{e}: check `[smtp] host`, `port`, `tls`, `ca_file` and `tls_server_name`"
                            ),
                        ),
                    }
                }
                Err(e) => r.add("smtp", "fail", format!("{e:#}")),
            }
        }
        // Ping URLs: only that their host resolves (a request would count as a ping).
        for (job, url) in &cfg.pings {
            match resolves(url).await {
                None => {}
                Some((host, true)) => r.add("pings", "ok", format!("`{job}`: `{host}` resolves")),
                Some((host, false)) => r.add(
                    "pings",
                    "warn",
                    format!("`{job}`: `{host}` does not resolve: its pings will fail (the job will not); check DNS or `[pings] {job}`"),
                ),
            }
        }
    }
    let failed = r.0.iter().any(|f| f.level == "fail");
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::to_value(&r.0)?);
    } else {
        for f in &r.0 {
            crate::outln!("{:<5} {:<12} {}", f.level, f.check, f.message);
        }
    }
    Ok(if failed { Code::Failure } else { Code::Success })
}

fn private(r: &mut Report, path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let actual = m.permissions().mode() & 0o777;
        if actual & 0o077 != 0 {
            r.add(
                "permissions",
                "warn",
                format!(
                    "`{}` is mode {actual:o}: others can read it; `chmod {mode:o}` it",
                    path.display()
                ),
            );
        } else {
            r.add(
                "permissions",
                "ok",
                format!("`{}` is private ({actual:o})", path.display()),
            );
        }
    }
}

/// Bytes an unprivileged user may still write on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Name resolution, then an HTTP(S) answer (any status) within 10 s.
/// A URL's host, and whether it resolves (`None`: not a URL).
async fn resolves(url: &str) -> Option<(String, bool)> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str().unwrap_or_default().to_string();
    let port = u.port_or_known_default().unwrap_or(443);
    let ok = tokio::net::lookup_host((host.as_str(), port))
        .await
        .is_ok_and(|mut a| a.next().is_some());
    Some((host, ok))
}

async fn reach(r: &mut Report, name: &str, url: &str) {
    let Some((host, ok)) = resolves(url).await else {
        return;
    };
    if !ok {
        r.add(
            name,
            "fail",
            format!("`{host}` does not resolve: check DNS or `[{name}] base_url`"),
        );
        return;
    }
    let client = match crate::http::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return r.add(name, "fail", e.to_string()),
    };
    match client.get(url).send().await {
        Ok(resp) => r.add(name, "ok", format!("`{url}` answers ({})", resp.status())),
        Err(e) => r.add(
            name,
            "fail",
            format!(
                "{}: check the network, the CA certificates and `[{name}] base_url`",
                crate::http::describe_error(&e, &format!("{name} service"))
            ),
        ),
    }
}

/// Whether the nearest existing folder above `path` lets this user create it.
fn nearest_writable(path: &Path) -> String {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.exists() {
            return match tempfile::tempfile_in(d) {
                Ok(_) => format!("`{}` is writable", d.display()),
                Err(e) => format!(
                    "but `{}` is not writable: {e}; create the folder or fix its owner",
                    d.display()
                ),
            };
        }
        dir = d.parent();
    }
    "no folder above it exists".to_string()
}
