//! The test harness: a temporary folder with a config pointing at a fresh sandbox, and a
//! builder-like way to run the binary and read the store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chrono::NaiveDate;
use crm_jobs::domain::cpf::Cpf;
use crm_jobs::sandbox::{DEFAULT_PASSPHRASE, Sandbox, SbDebt, SbInvoice};

/// The pinned "now" of every test: 2025-11-10 12:00 in São Paulo.
pub const NOW: &str = "2025-11-10T12:00:00-03:00";

/// A valid Fernet key (bytes 0..31, url-safe base64).
pub const FERNET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sandbox: Sandbox,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// A valid CPF, distinct per `n`.
pub fn cpf(n: u32) -> Cpf {
    Cpf::from_base(123_000_000 + n * 7919)
}

impl Env {
    pub fn new() -> Env {
        Env::with_nio("")
    }

    /// A fresh env; `extra` goes into the `[nio]` section of the config.
    pub fn with_nio(extra: &str) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            sandbox: Sandbox::start(DEFAULT_PASSPHRASE, 0).unwrap(),
        };
        env.write_config(extra);
        env
    }

    /// Writes the config; `extra` lines (`key = value`) go into `[nio]`, replacing defaults.
    pub fn write_config(&self, extra: &str) {
        self.configure(extra, "");
    }

    /// Writes the config with extra lines for `[nio]` and `[canopus]`.
    pub fn configure(&self, extra: &str, canopus_extra: &str) {
        let mut nio = vec![
            format!("base_url = \"{}\"", self.sandbox.nio_base_url()),
            format!("pdf_url_template = \"{}\"", self.sandbox.nio_pdf_template()),
            "concurrency = 4".to_string(),
            "request_retries = 0".to_string(),
            "retry_backoff_ms = 10".to_string(),
        ];
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            nio.retain(|l| l.split('=').next().unwrap().trim() != key);
            nio.push(line.to_string());
        }
        let mut canopus = vec![
            format!("base_url = \"{}\"", self.sandbox.canopus_base_url()),
            "concurrency = 2".to_string(),
            // Tests wait 10 ms before trying a portal request again, not the default 500.
            "backoff_ms = 10".to_string(),
        ];
        for line in canopus_extra.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            canopus.retain(|l| l.split('=').next().unwrap().trim() != key);
            canopus.push(line.to_string());
        }
        let config = format!(
            "[store]\npath = \"store/crm.db\"\n\n[downloads]\ndir = \"downloads\"\n\n[crm]\nbase_url = \"{}\"\n\n[stripe]\nbase_url = \"{}\"\nretries = 0\n\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nuser = \"{}\"\nfrom = \"Equipe Painel <nao-responda@painel.test>\"\ntimeout_secs = 5\n\n[canopus]\n{}\n\n[nio]\n{}\n",
            self.sandbox.crm_base_url(),
            self.sandbox.stripe_base_url(),
            self.sandbox.smtp.addr().port(),
            crm_jobs::sandbox::SMTP_USER,
            canopus.join("\n"),
            nio.join("\n")
        );
        std::fs::write(self.path("config.toml"), config).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm-jobs"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CRM_JOBS_") || k == "NO_COLOR" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir("/")
            .env("HOME", self.dir.path())
            .env("CRM_JOBS_CONFIG", self.path("config.toml"))
            .env("CRM_JOBS_NIO_PASSPHRASE", DEFAULT_PASSPHRASE)
            .env("CRM_JOBS_NOW", NOW)
            .env("CRM_JOBS_FERNET_KEY", FERNET_KEY)
            .env(
                "CRM_JOBS_CRM_ACCESS_TOKEN",
                crm_jobs::sandbox::crm::ACCESS_TOKEN,
            )
            .env(
                "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
                crm_jobs::sandbox::crm::SECRET_TOKEN,
            )
            .env(
                "CRM_JOBS_STRIPE_SECRET_KEY",
                crm_jobs::sandbox::stripe::SECRET_KEY,
            )
            .env("CRM_JOBS_SMTP_PASSWORD", crm_jobs::sandbox::SMTP_PASSWORD)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out::from(self.cmd(args).output().unwrap())
    }

    /// Runs the binary with stdin read from `stdin` (else nothing) and its data capped at 1 GB
    /// (`RLIMIT_DATA`: a runaway read fails at once instead of filling the machine); returns
    /// its output and its peak resident memory in kB, as the kernel counted it (`wait4`).
    #[allow(
        unsafe_code,
        reason = "setrlimit between fork and exec, and wait4 for the child's peak memory: no safe API gives either"
    )]
    pub fn run_measured(&self, args: &[&str], stdin: Option<&Path>) -> (Out, i64) {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let (out_path, err_path) = (self.path("measured.out"), self.path("measured.err"));
        let mut cmd = self.cmd(args);
        cmd.stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        if let Some(p) = stdin {
            cmd.stdin(std::fs::File::open(p).unwrap());
        }
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let cap = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &cap) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Reaped below by wait4, which also tells its peak memory.
        #[allow(clippy::zombie_processes, reason = "reaped below by wait4")]
        let child = cmd.spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
        let out = Out::from(Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: std::fs::read(&out_path).unwrap(),
            stderr: std::fs::read(&err_path).unwrap(),
        });
        (out, usage.ru_maxrss)
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path("store/crm.db")).unwrap()
    }

    pub fn query<T: rusqlite::types::FromSql>(&self, sql: &str) -> T {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Imports contracts from CSV text; panics unless it exits 0.
    pub fn import_contracts(&self, csv: &str) {
        let file = self.path("contracts.csv");
        std::fs::write(&file, csv).unwrap();
        let out = self.run(&["import", "contracts", file.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// One contract `C{n}` installed on 2025-06-05 (invoices due on the 30th from June; on
    /// 2025-11-10, invoices 1..5 are available and 6..10 are not).
    pub fn one_contract(&self, n: u32) -> Cpf {
        let c = cpf(n);
        self.import_contracts(&format!(
            "contrato,cpf,nome,data_instalacao\nC{n},{},CLIENTE {n},2025-06-05\n",
            c.formatted()
        ));
        c
    }

    pub fn downloads(&self) -> PathBuf {
        self.path("downloads")
    }
}

/// The due date of invoice `n` of a contract installed on 2025-06-05.
pub fn due(n: u32) -> NaiveDate {
    crm_jobs::domain::due_dates::due_date(date("2025-06-05"), n)
}

/// One debt holding open invoices for the given numbers, 99,90 each.
pub fn debt(prefix: &str, numbers: &[u32]) -> SbDebt {
    SbDebt {
        debt_id: format!("D{prefix}"),
        invoices: numbers
            .iter()
            .map(|&n| SbInvoice::new(&format!("{prefix}{n:02}"), due(n), 9_990))
            .collect(),
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Replaces `key = ...` of `[section]` in the config (the key must be there).
pub fn set_key(env: &Env, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut done = false;
    for line in text.lines() {
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
        }
        if current == section && line.split('=').next().map(str::trim) == Some(key) {
            out.push(format!("{key} = {value}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(done, "no `{key}` in [{section}]");
    std::fs::write(env.path("config.toml"), out.join("\n") + "\n").unwrap();
}
