//! The bad-input corpus (issue 7): CSV, XLSX, JSON lines, config TOML and environment, command
//! lines, secrets, the portals' answers, Stripe and SMTP. Each case gets one clear message that
//! names the thing (pinned here), its documented exit code, and the store's data does not
//! change beyond the good rows of the same file.
//!
//! `CRM_JOBS_CORPUS_PRINT=1 cargo test --test cli corpus` prints what each case said.

use crate::support::*;

struct Case {
    name: &'static str,
    /// A file written as `input` in the test folder (`{f}` in args and message).
    file: Option<&'static [u8]>,
    file_name: &'static str,
    /// TOML appended to the config.
    config: &'static str,
    /// Environment variables set (or removed when the value is empty).
    env: &'static [(&'static str, &'static str)],
    setup: fn(&Env),
    args: &'static [&'static str],
    code: i32,
    /// Pinned text the error output must contain (`{f}`: the input file's path).
    message: &'static str,
    /// Rows of the store's data tables added by the good part of the input.
    added: i64,
}

fn nothing(_: &Env) {}

fn contract(env: &Env) {
    env.one_contract(1);
}

fn captcha(env: &Env) {
    let c = env.one_contract(2);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("200", &[1])]);
    env.sandbox.nio.set_captcha(true);
}

fn customer(env: &Env) {
    let c = env.one_contract(3);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("300", &[1])]);
}

fn queued_email(env: &Env) {
    let file = env.path("subs.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#,
            r#"{"type": "user", "id": "u1", "name": "Ana", "email": "ana@example.com"}"#,
            r#"{"type": "subscription", "id": "s1", "user": "u1", "plan": "pro", "status": "active", "current_period_start": "2025-10-12T00:00:00Z", "current_period_end": "2025-11-12T00:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    assert_eq!(
        env.run(&["import", "subscriptions", file.to_str().unwrap()])
            .code,
        0
    );
    assert_eq!(env.run(&["renew", "--step", "expiring"]).code, 0);
}

fn not_a_pdf(env: &Env) {
    let c = env.one_contract(4);
    let mut d = debt("400", &[1]);
    d.invoices[0].pdf = crm_jobs::sandbox::PdfKind::NotPdf;
    env.sandbox.nio.set_customer(c.digits(), vec![d]);
}

fn stripe_subscription(env: &Env, stripe_id: &str) {
    let file = env.path("stripe.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#.to_string(),
            r#"{"type": "user", "id": "u1", "name": "Ana", "email": "ana@example.com"}"#.to_string(),
            format!(
                r#"{{"type": "subscription", "id": "s1", "user": "u1", "plan": "pro", "status": "active", "current_period_start": "2025-10-10T22:00:00Z", "current_period_end": "2025-11-10T22:00:00Z", "gateway": "stripe", "gateway_subscription_id": "{stripe_id}"}}"#
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    assert_eq!(
        env.run(&["import", "subscriptions", file.to_str().unwrap()])
            .code,
        0
    );
}

fn stripe_unknown(env: &Env) {
    stripe_subscription(env, "sub_404");
}

fn stripe_known(env: &Env) {
    stripe_subscription(env, "sub_1");
    env.sandbox
        .stripe
        .set("sub_1", "active", 1_762_812_000, 1_765_404_000);
}

fn stripe_down(env: &Env) {
    stripe_known(env);
    env.sandbox.faults.push(
        crm_jobs::sandbox::Route::Stripe,
        crm_jobs::sandbox::Fault::Status {
            status: 500,
            retry_after: None,
        },
        5,
    );
}

fn smtp_rejects(env: &Env) {
    queued_email(env);
    env.sandbox
        .smtp
        .push_fault(crm_jobs::sandbox::smtp::SmtpFault::RejectMail {
            code: 550,
            text: "5.1.1 Mailbox unavailable".into(),
        });
}

const DATA_TABLES: &[&str] = &[
    "contracts",
    "invoices",
    "clients",
    "sales_points",
    "sync_queue",
    "users",
    "plans",
    "subscriptions",
    "payments",
    "sessions",
];

fn data_rows(env: &Env) -> i64 {
    let db = env.db();
    DATA_TABLES
        .iter()
        .map(|t| {
            db.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        })
        .sum()
}

fn cases() -> Vec<Case> {
    let base = Case {
        name: "",
        file: None,
        file_name: "input.csv",
        config: "",
        env: &[],
        setup: nothing,
        args: &[],
        code: 0,
        message: "",
        added: 0,
    };
    macro_rules! case {
        ($($k:ident: $v:expr),* $(,)?) => { Case { $($k: $v,)* ..base } };
    }
    vec![
        // Contracts CSV.
        case!(name: "csv: CPF check digits", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,123.456.789-00,ANA,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: invalid CPF: CPF check digits do not match (a typo?); row skipped"),
        case!(name: "csv: CPF all digits equal", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,111.111.111-11,ANA,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: invalid CPF: CPF has all digits equal; row skipped"),
        case!(name: "csv: CPF too short", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,1234,ANA,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: invalid CPF: CPF has 4 digits, expected 11 (padded with the leading zeros a spreadsheet drops, its check digits do not match); row skipped"),
        case!(name: "csv: impossible date", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,529.982.247-25,ANA,31/02/2025\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: `data_instalacao` = `31/02/2025` is not a date (expected YYYY-MM-DD or DD/MM/YYYY); row skipped"),
        case!(name: "csv: empty name", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,529.982.247-25,,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: `nome` is empty; row skipped"),
        case!(name: "csv: too many fields", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,529.982.247-25,ANA,2025-06-05,x\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: the row has 5 fields but the header has 4; row skipped"),
        case!(name: "csv: a required column missing", file: Some(b"contrato,nome,data_instalacao\nA1,ANA,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 1, message: "`{f}` has no `cpf` column (its header row is: contrato, nome, data_instalacao); expected columns: contrato, cpf, nome, data_instalacao"),
        case!(name: "csv: a column twice", file: Some(b"contrato,cpf,nome,data_instalacao,CPF\nA1,529.982.247-25,ANA,2025-06-05,529.982.247-25\n"), args: &["import", "contracts", "{f}"], code: 1, message: "`{f}`: the header has the column `cpf` twice, column 2 (`cpf`) and column 5 (`CPF`): keep one and import again; nothing was imported"),
        case!(name: "csv: empty file", file: Some(b""), args: &["import", "contracts", "{f}"], code: 1, message: "`{f}` is empty: expected a header row with the columns contrato, cpf, nome, data_instalacao and one row per line"),
        case!(name: "csv: not UTF-8", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,529.982.247-25,JOS\xc9,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 1, message: "`{f}` is not UTF-8 text: save the spreadsheet as CSV UTF-8"),
        case!(name: "csv: no such file", args: &["import", "contracts", "/nonexistent/contratos.csv"], code: 1, message: "cannot read `/nonexistent/contratos.csv`\n  Caused by: No such file or directory (os error 2)"),
        case!(name: "csv: CRLF rows, a blank line, a field over two lines", file: Some(b"contrato,cpf,nome,data_instalacao,obs\r\nA1,529.982.247-25,ANA,2025-06-05,\"a\r\nb\"\r\n\r\nA2,123.456.789-00,BIA,2025-06-05,\r\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:5: invalid CPF: CPF check digits do not match (a typo?); row skipped", added: 11),
        case!(name: "csv: a bad contract amount", file: Some(b"contrato,cpf,nome,data_instalacao,valor\nA1,529.982.247-25,ANA,2025-06-05,dez reais\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:2: `valor`: `dez reais` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`); row skipped"),
        case!(name: "csv: one good row, one bad", file: Some(b"contrato,cpf,nome,data_instalacao\nA1,529.982.247-25,ANA,2025-06-05\nA2,123.456.789-00,BIA,2025-06-05\n"), args: &["import", "contracts", "{f}"], code: 3, message: "{f}:3: invalid CPF: CPF check digits do not match (a typo?); row skipped", added: 11),
        // Invoices CSV.
        case!(name: "invoices csv: bad amount", file: Some(b"contrato,numero,vencimento,valor\nC1,1,2025-07-10,12;3x\n"), setup: contract, args: &["import", "invoices", "{f}"], code: 3, message: "{f}:2: `valor`: `12;3x` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`); row skipped"),
        case!(name: "invoices csv: number out of range", file: Some(b"contrato,numero,vencimento\nC1,11,2025-07-10\n"), setup: contract, args: &["import", "invoices", "{f}"], code: 3, message: "{f}:2: `numero` = `11` is not an invoice number from 1 to 10; row skipped"),
        case!(name: "invoices csv: unknown contract", file: Some(b"contrato,numero,vencimento\nNOPE,1,2025-07-10\n"), setup: contract, args: &["import", "invoices", "{f}"], code: 3, message: "{f}:2: contract `NOPE` is unknown: import it first with `crm-jobs import contracts`; row skipped"),
        // XLSX.
        case!(name: "xlsx: a text file named .xlsx", file: Some(b"contrato;cpf\nA1;1\n"), file_name: "PLANILHA.xlsx", args: &["import", "clients", "{f}", "--consultor", "Dener"], code: 1, message: "cannot open `{f}`: consultant spreadsheets must be `.xlsx` workbooks"),
        case!(name: "xlsx: an empty file", file: Some(b""), file_name: "PLANILHA.xlsx", args: &["import", "clients", "{f}", "--consultor", "Dener"], code: 1, message: "cannot open `{f}`: consultant spreadsheets must be `.xlsx` workbooks"),
        case!(name: "xlsx: a zip that is not a workbook", file: Some(b"PK\x03\x04\x14\x00\x00\x00\x08\x00garbage"), file_name: "PLANILHA.xlsx", args: &["import", "clients", "{f}", "--consultor", "Dener"], code: 1, message: "cannot open `{f}`: consultant spreadsheets must be `.xlsx` workbooks"),
        // Queue JSON lines.
        case!(name: "jsonl: not JSON", file: Some(b"{entity: produtos}\n"), file_name: "changes.jsonl", args: &["enqueue", "{f}"], code: 3, message: "{f}:1: not JSON (key must be a string at line 1 column 2); line skipped"),
        case!(name: "jsonl: unknown entity", file: Some(br#"{"entity": "pedidos", "record_id": "1", "action": "create", "payload": {}}"#), file_name: "changes.jsonl", args: &["enqueue", "{f}"], code: 3, message: "{f}:1: `entity` = `pedidos` is not one of atividades, clientes, produtos, vendas (`[crm.resources]`); line skipped"),
        case!(name: "jsonl: no record_id", file: Some(br#"{"entity": "produtos", "action": "create", "payload": {"nome": "P"}}"#), file_name: "changes.jsonl", args: &["enqueue", "{f}"], code: 3, message: "{f}:1: `record_id` is missing; line skipped"),
        case!(name: "jsonl: unknown action", file: Some(br#"{"entity": "produtos", "record_id": "1", "action": "merge", "payload": {"nome": "P"}}"#), file_name: "changes.jsonl", args: &["enqueue", "{f}"], code: 3, message: "{f}:1: `action` = `merge` is not one of create, update, delete, upsert; line skipped"),
        case!(name: "jsonl: payload not an object", file: Some(br#"{"entity": "produtos", "record_id": "1", "action": "create", "payload": [1, 2]}"#), file_name: "changes.jsonl", args: &["enqueue", "{f}"], code: 3, message: "{f}:1: `payload` must be a JSON object; line skipped"),
        // Subscriptions JSON lines.
        case!(name: "subscriptions: bad email", file: Some(br#"{"type": "user", "id": "u1", "name": "Ana", "email": "not-an-email"}"#), file_name: "subs.jsonl", args: &["import", "subscriptions", "{f}"], code: 3, message: "{f}:1: `email` = `not-an-email` is not an email address; line skipped"),
        case!(name: "subscriptions: unknown type", file: Some(br#"{"type": "coupon", "id": "c1"}"#), file_name: "subs.jsonl", args: &["import", "subscriptions", "{f}"], code: 3, message: "{f}:1: `type` = `coupon` is not one of plan, user, subscription, session, payment; line skipped"),
        case!(name: "subscriptions: bad instant", file: Some(br#"{"type": "payment", "id": "p1", "user": "u1", "amount": 10, "status": "pending", "created_at": "ontem"}"#), file_name: "subs.jsonl", args: &["import", "subscriptions", "{f}"], code: 3, message: "{f}:1: `created_at` = `ontem` is not an RFC 3339 instant (e.g. `2025-11-13T12:00:00Z`); line skipped"),
        case!(name: "subscriptions: price not money", file: Some(br#"{"type": "plan", "id": "pro", "name": "Pro", "price": "quarenta"}"#), file_name: "subs.jsonl", args: &["import", "subscriptions", "{f}"], code: 3, message: "{f}:1: `price`: `quarenta` is not an amount of money (expected e.g. `R$ 1.234,56` or `99.90`); line skipped"),
        // Config TOML and environment.
        case!(name: "config: TOML syntax", config: "[nio\nbase_url = 1\n", args: &["config", "check"], code: 78, message: "invalid config file `"),
        case!(name: "config: unknown key", config: "[fetch]\nlimt = 20\n", args: &["config", "check"], code: 78, message: "config.toml`: `[fetch] limt`: unknown field `limt`, expected `limit`"),
        case!(name: "config: unknown section", config: "[fetcher]\nlimit = 20\n", args: &["config", "check"], code: 78, message: "config.toml`: `[fetcher]`: unknown section `fetcher`, expected one of `store`, `downloads`"),
        case!(name: "config: wrong type", config: "[retry]\nmax_attempts = \"three\"\n", args: &["config", "check"], code: 78, message: "config.toml`: `[retry] max_attempts`: invalid type: string \"three\", expected u32"),
        case!(name: "config: unknown environment variable", env: &[("CRM_JOBS_NIO_BASEURL", "http://x")], args: &["config", "check"], code: 78, message: "invalid environment variable `CRM_JOBS_NIO_BASEURL`: `[nio] baseurl`: unknown field `baseurl`, expected one of `base_url`"),
        case!(name: "config: bad environment value", env: &[("CRM_JOBS_RETRY_MAX_ATTEMPTS", "many")], args: &["config", "check"], code: 78, message: "invalid environment variable `CRM_JOBS_RETRY_MAX_ATTEMPTS`: `[retry] max_attempts`: invalid type: string \"many\", expected u32"),
        case!(name: "config: ping URL not http", config: "[pings]\nretry = \"ftp://x\"\n", args: &["config", "check"], code: 78, message: "`[pings] retry` = `ftp://x` is not an http(s) URL"),
        case!(name: "config: natural key without a filter", config: "[crm.natural_keys]\nclientes = \"cpf_cnpj\"\n", args: &["config", "check"], code: 78, message: "`[crm.natural_keys] clientes` = `cpf_cnpj`: expected `/json/pointer=filter` for an entity of `[crm.resources]`"),
        case!(name: "config: alerts to not an address", config: "[alerts]\nto = \"ops\"\n", args: &["config", "check"], code: 78, message: "`[alerts] to` = `ops` is not an email address"),
        case!(name: "config: schedule expression", config: "[schedule.retry]\ncron = \"0 25 * * *\"\n", args: &["config", "check"], code: 78, message: "`[schedule.retry] cron` = `0 25 * * *`: the hour field `25` is not valid (values 0-23; Component error: Number out of bounds.)"),
        case!(name: "config: schedule time zone", config: "[schedule.retry]\ntimezone = \"Brasilia\"\n", args: &["config", "check"], code: 78, message: "`[schedule.retry] timezone` = `Brasilia` is not an IANA time zone (e.g. `America/Sao_Paulo`)"),
        case!(name: "config: TLS CA file missing", config: "[tls]\nca_file = \"/nonexistent/ca.pem\"\n", args: &["config", "check"], code: 78, message: "cannot read `[tls] ca_file` `/nonexistent/ca.pem`: No such file or directory (os error 2)"),
        case!(name: "config: file missing", args: &["--config", "/nonexistent/config.toml", "config", "check"], code: 78, message: "config file `/nonexistent/config.toml` (given with --config) does not exist"),
        // Command lines.
        case!(name: "cli: safra out of range", args: &["fetch-invoices", "--safra", "2025-13"], code: 2, message: "invalid value '2025-13' for '--safra <YYYY-MM>': expected a month as YYYY-MM, e.g. 2025-03"),
        case!(name: "cli: not a job", args: &["pause", "fetch"], code: 2, message: "`fetch` is not a job; jobs: fetch-invoices, retry, download-boletos, sync-queue, cleanup, renew"),
        case!(name: "cli: bad CPF flag", args: &["download-boletos", "--cpf", "123"], code: 2, message: "`--cpf`: CPF has 3 digits, expected 11 (padded with the leading zeros a spreadsheet drops, its check digits do not match)"),
        // Secrets.
        case!(name: "secret: passphrase missing", env: &[("CRM_JOBS_NIO_PASSPHRASE", "")], setup: contract, args: &["fetch-invoices"], code: 78, message: "the Nio passphrase is not set"),
        case!(name: "secret: Fernet key malformed", env: &[("CRM_JOBS_FERNET_KEY", "short")], args: &["download-boletos"], code: 78, message: "the Fernet key is not valid (expected 32 bytes in url-safe base64, as `Fernet.generate_key()` makes)"),
        case!(name: "secret: passphrase file unreadable", env: &[("CRM_JOBS_NIO_PASSPHRASE", ""), ("CRM_JOBS_NIO_PASSPHRASE_FILE", "/nonexistent/pass")], setup: contract, args: &["fetch-invoices"], code: 78, message: "cannot read the secret file `/nonexistent/pass` (from CRM_JOBS_NIO_PASSPHRASE_FILE or the config): No such file or directory (os error 2); check the path and that this user may read it"),
        // The portals' answers.
        case!(name: "nio: a renamed field", config: "[nio.fields]\ndebts = \"dividas\"\n", setup: customer, args: &["fetch-invoices"], code: 1, message: "the Nio debts answer has no `dividas` list: the API changed; see `[nio.fields] debts`"),
        case!(name: "nio: captcha wall", setup: captcha, args: &["fetch-invoices"], code: 1, message: "it wants a browser and a reCAPTCHA (captcha wall). Stopping the run instead of insisting; try again later"),
        case!(name: "nio: a PDF body that is not a PDF", setup: not_a_pdf, args: &["fetch-invoices", "--no-retry"], code: 1, message: "is not a PDF (42 bytes starting with `<html><body>Sess"),
        // Stripe and SMTP.
        case!(name: "stripe: key missing", env: &[("CRM_JOBS_STRIPE_SECRET_KEY", "")], args: &["renew", "--step", "stripe"], code: 78, message: "the Stripe secret key is not set: export `CRM_JOBS_STRIPE_SECRET_KEY` or set `[stripe] secret_key_file`"),
        case!(name: "stripe: unknown subscription", setup: stripe_unknown, args: &["renew", "--step", "stripe"], code: 1, message: "subscription `s1`: Stripe answered 404 Not Found for `sub_404` (resource_missing: No such subscription: 'sub_404')"),
        case!(name: "stripe: refused key", env: &[("CRM_JOBS_STRIPE_SECRET_KEY", "sk_test_wrong")], setup: stripe_known, args: &["renew", "--step", "stripe"], code: 78, message: "Stripe refused the secret key (401 Unauthorized: Invalid API Key provided: sk_test_****): check `CRM_JOBS_STRIPE_SECRET_KEY`; the step stopped"),
        case!(name: "stripe: server error", setup: stripe_down, args: &["renew", "--step", "stripe"], code: 1, message: "subscription `s1`: Stripe answered 500 Internal Server Error"),
        case!(name: "smtp: recipient refused", setup: smtp_rejects, args: &["renew", "--step", "emails"], code: 1, message: "email #1 to ana@example.com: the SMTP server refused it: permanent error (550): 5.1.1 Mailbox unavailable"),
        case!(name: "smtp: refused password", env: &[("CRM_JOBS_SMTP_PASSWORD", "wrong")], setup: queued_email, args: &["renew", "--step", "emails"], code: 78, message: "the SMTP server `127.0.0.1` refused the credentials of `[smtp] user` `sandbox` (permanent error (535): 5.7.8 Authentication credentials invalid): check `CRM_JOBS_SMTP_PASSWORD` (or `[smtp] password_file`) and `[smtp] user`; 1 email(s) wait for the next run (the state changes stand)"),
    ]
}

#[test]
fn corpus_of_bad_inputs_each_with_one_clear_pinned_message() {
    let print = std::env::var("CRM_JOBS_CORPUS_PRINT").is_ok();
    let all = cases();
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut failures = Vec::new();
    for case in all {
        let env = Env::new();
        assert_eq!(env.run(&["status"]).code, 0);
        (case.setup)(&env);
        let before = data_rows(&env);
        let path = env.path(case.file_name);
        if let Some(bytes) = case.file {
            std::fs::write(&path, bytes).unwrap();
        }
        if !case.config.is_empty() {
            let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
            std::fs::write(env.path("config.toml"), format!("{cfg}\n{}", case.config)).unwrap();
        }
        let f = path.to_str().unwrap();
        let args: Vec<String> = case.args.iter().map(|a| a.replace("{f}", f)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = env.cmd(&args);
        for (k, v) in case.env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        let code = o.status.code().unwrap_or(-1);
        if print {
            eprintln!("=== {} (exit {code})\n{stderr}", case.name);
            continue;
        }
        let message = case.message.replace("{f}", f);
        if code != case.code || message == "PIN" || !stderr.contains(&message) {
            failures.push(format!(
                "{}: exit {code} (expected {}), stderr:\n{stderr}\nexpected to contain: {message}",
                case.name, case.code
            ));
            continue;
        }
        // Nothing else changes: only the good rows of the input were added.
        if code != 78 || std::path::Path::new(&env.path("store/crm.db")).exists() {
            let after = data_rows(&env);
            if after - before != case.added {
                failures.push(format!(
                    "{}: {} data row(s) added, expected {}",
                    case.name,
                    after - before,
                    case.added
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
