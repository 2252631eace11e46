//! One source for the schedules: `[schedule.<name>]` entries in the config, each a crontab(5)
//! expression, a time zone and a command line. From them come the crontab
//! (`schedule crontab`), the systemd units and timers (`schedule systemd`), the next start
//! shown by `status`, and how long a job may go without a success before an alert.
//!
//! Expressions are read by `croner` held to crontab(5): five fields, numbers, names, `*`, `,`,
//! `-`, `/` and the `@daily`-style nicknames, with cron's rule that a restricted day of month and
//! a restricted day of week match either (not both). croner's extensions (`L`, `W`, `#`, `?`)
//! are refused, since cron would refuse them.
//!
//! (The `schedule` subcommand that shows and writes these is `jobs::schedule`; the due dates of
//! a contract's invoices are `domain::due_dates`.)

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::config::{Config, ScheduleEntry};
use crate::exit::CodedError;
use crate::job::Job;

/// croner's flag for a plain value in a component.
const ALL_BIT: u8 = 1;

/// The default time zone of every entry.
pub const DEFAULT_TIMEZONE: &str = "America/Sao_Paulo";
/// systemd's `RandomizedDelaySec=` when an entry does not say.
pub const DEFAULT_RANDOMIZED_DELAY: &str = "2min";

/// The built-in schedule (the users' schedule): `(name, cron, command, then, description,
/// randomized delay, quiet)`. `[schedule.<name>]` in the config changes any field of an entry,
/// `enabled = false` drops one, and a new name adds one.
/// `(name, cron, command, then, description, randomized delay, quiet)`.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    bool,
);

const DEFAULTS: &[Builtin] = &[
    (
        "fetch-invoices",
        "0 8,14,20 * * *",
        "fetch-invoices --limit 20 --origin automatic",
        None,
        "Nio invoices of the 20 contracts fetched least recently",
        "2min",
        false,
    ),
    (
        "retry",
        "30 21 * * *",
        "retry",
        None,
        "invoices whose last attempt failed transiently, up to the attempt limit",
        "2min",
        false,
    ),
    (
        "download-boletos",
        "30 7 * * *",
        "download-boletos",
        None,
        "this month's Canopus boletos of every sales point with credentials",
        "2min",
        false,
    ),
    (
        "sync-queue",
        "* * * * *",
        "sync-queue",
        None,
        "the CRM outbox, up to [sync] batch items, within the CRM's rate limit",
        "0",
        true,
    ),
    (
        "renew-expired",
        "30 0 * * *",
        "renew --step expired",
        Some("renew --step emails"),
        "subscriptions whose period ended become inactive; then the emails",
        "2min",
        false,
    ),
    (
        "renew-stripe",
        "0 2 * * *",
        "renew --step stripe",
        Some("renew --step emails"),
        "Stripe subscriptions whose period ends today, asked of Stripe; then the emails",
        "2min",
        false,
    ),
    (
        "renew-expiring",
        "0 9 * * *",
        "renew --step expiring",
        Some("renew --step emails"),
        "warnings for subscriptions ending within [renew] days; then the emails",
        "2min",
        false,
    ),
    (
        "cleanup",
        "0 3 * * *",
        "cleanup --only sync_log --only queue_done --only queue_failed --only runs --only job_skips --only email_outbox --only diagnostics",
        None,
        "old log rows, finished queue items, old runs and sent emails, then a WAL checkpoint",
        "5min",
        false,
    ),
    (
        "cleanup-sessions",
        "30 3 * * 0",
        "cleanup --only sessions",
        None,
        "weekly soft delete of sessions expired long ago",
        "5min",
        false,
    ),
    (
        "cleanup-payments",
        "45 3 1 * *",
        "cleanup --only payments",
        None,
        "monthly cancel of payments pending for too long",
        "5min",
        false,
    ),
];

/// One scheduled command, checked.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    /// The expression as written (whitespace normalized).
    pub expr: String,
    pub cron: Cron,
    pub timezone: Tz,
    /// The job the command runs (its subcommand).
    pub job: Job,
    pub command: Vec<String>,
    /// A command run right after, in the same cron line or unit (`ExecStartPost=`).
    pub then: Option<Vec<String>>,
    pub description: String,
    pub randomized_delay: String,
    /// Add `--quiet` in the crontab (cron mails whatever a run prints).
    pub quiet: bool,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// Parses a crontab(5) expression (five fields or a nickname such as `@daily`).
pub fn parse_cron(expr: &str) -> std::result::Result<Cron, String> {
    let upper = expr.trim().to_ascii_uppercase();
    if upper == "@REBOOT" {
        return Err("`@reboot` has no time to schedule; use a boot unit instead".into());
    }
    const NAMES: &[&str] = &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
        "MON", "TUE", "WED", "THU", "FRI", "SAT",
    ];
    if !upper.starts_with('@') {
        let mut rest = upper.clone();
        for n in NAMES {
            rest = rest.replace(n, "");
        }
        if let Some(c) = rest
            .chars()
            .find(|c| !(c.is_ascii_digit() || " \t*,-/".contains(*c)))
        {
            return Err(format!(
                "`{c}` is not crontab(5) syntax (fields take numbers, names, `*`, `,`, `-` and `/`)"
            ));
        }
        let f: Vec<&str> = upper.split_whitespace().collect();
        let fields = f.len();
        if fields == 5
            && f[2] != "*"
            && f[4] != "*"
            && (f[2].starts_with('*') || f[4].starts_with('*'))
        {
            return Err(format!(
                "day of month `{}` with day of week `{}`: a stepped `*` in one of them is read differently by cron implementations; list the days instead",
                f[2], f[4]
            ));
        }
        if fields != 5 {
            return Err(format!(
                "{fields} field(s): crontab(5) has five (minute hour day-of-month month day-of-week)"
            ));
        }
    }
    parser().parse(expr).map_err(|e| {
        // croner says what is wrong, not where: find the field by parsing it alone.
        const FIELDS: [(&str, &str); 5] = [
            ("minute", "0-59"),
            ("hour", "0-23"),
            ("day of month", "1-31"),
            ("month", "1-12 or JAN-DEC"),
            ("day of week", "0-7 or SUN-SAT"),
        ];
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() == 5 {
            for (i, (name, range)) in FIELDS.iter().enumerate() {
                let mut alone = ["*"; 5];
                alone[i] = f[i];
                if parser().parse(&alone.join(" ")).is_err() {
                    return format!(
                        "the {name} field `{}` is not valid (values {range}; {e})",
                        f[i]
                    );
                }
            }
        }
        e.to_string()
    })
}

/// Splits a command line into words (no quotes, no shell: the same line runs under cron and
/// systemd).
fn words(entry: &str, key: &str, line: &str) -> Result<Vec<String>> {
    if let Some(c) = line.chars().find(|c| "'\"\\$;|&<>`%*?~#".contains(*c)) {
        return Err(CodedError::config(format!(
            "`[schedule.{entry}] {key}` = `{line}`: `{c}` is not allowed (a command line of crm-jobs arguments, without quotes or shell syntax)"
        )));
    }
    let w: Vec<String> = line.split_whitespace().map(String::from).collect();
    if w.is_empty() {
        return Err(CodedError::config(format!(
            "`[schedule.{entry}] {key}` is empty: give the subcommand and its flags, e.g. `fetch-invoices --limit 20`"
        )));
    }
    Ok(w)
}

/// The schedule in force: the built-in entries changed by `[schedule.<name>]`, checked.
pub fn plan(config: &Config) -> Result<Vec<Planned>> {
    let mut merged: BTreeMap<String, ScheduleEntry> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (name, cron, command, then, description, delay, quiet) in DEFAULTS {
        merged.insert(
            name.to_string(),
            ScheduleEntry {
                cron: Some(cron.to_string()),
                timezone: None,
                command: Some(command.to_string()),
                then: then.map(String::from),
                description: Some(description.to_string()),
                randomized_delay: Some(delay.to_string()),
                quiet: Some(*quiet),
                enabled: Some(true),
            },
        );
        order.push(name.to_string());
    }
    for (name, e) in &config.schedule {
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || name.is_empty()
        {
            return Err(CodedError::config(format!(
                "`[schedule.{name}]`: a schedule name takes lowercase letters, digits and `-` (it names the systemd unit)"
            )));
        }
        let slot = merged.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            ScheduleEntry::default()
        });
        macro_rules! over {
            ($($f:ident),*) => {$(if e.$f.is_some() { slot.$f = e.$f.clone(); })*};
        }
        over!(
            cron,
            timezone,
            command,
            then,
            description,
            randomized_delay,
            quiet,
            enabled
        );
    }
    let mut out = Vec::new();
    for name in order {
        let e = &merged[&name];
        if e.enabled == Some(false) {
            continue;
        }
        let expr = e.cron.as_deref().ok_or_else(|| {
            CodedError::config(format!(
                "`[schedule.{name}]` has no `cron`: give a crontab(5) expression, e.g. `cron = \"0 8 * * *\"`"
            ))
        })?;
        let cron = parse_cron(expr)
            .map_err(|m| CodedError::config(format!("`[schedule.{name}] cron` = `{expr}`: {m}")))?;
        let tz_name = e.timezone.as_deref().unwrap_or(DEFAULT_TIMEZONE);
        let timezone: Tz = tz_name.parse().map_err(|_| {
            CodedError::config(format!(
                "`[schedule.{name}] timezone` = `{tz_name}` is not an IANA time zone (e.g. `America/Sao_Paulo`)"
            ))
        })?;
        let line = e.command.as_deref().ok_or_else(|| {
            CodedError::config(format!(
                "`[schedule.{name}]` has no `command`: give the subcommand and its flags, e.g. `command = \"retry\"`"
            ))
        })?;
        let command = words(&name, "command", line)?;
        let Ok(job) = command[0].parse::<Job>() else {
            return Err(CodedError::config(format!(
                "`[schedule.{name}] command` = `{line}`: `{}` is not a job ({})",
                command[0],
                Job::names()
            )));
        };
        let then = e
            .then
            .as_deref()
            .map(|t| words(&name, "then", t))
            .transpose()?;
        let randomized_delay = e
            .randomized_delay
            .clone()
            .unwrap_or_else(|| DEFAULT_RANDOMIZED_DELAY.to_string());
        if !randomized_delay
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ')
        {
            return Err(CodedError::config(format!(
                "`[schedule.{name}] randomized_delay` = `{randomized_delay}` is not a systemd time span (e.g. `2min`, `30s`, `0`)"
            )));
        }
        out.push(Planned {
            expr: expr.split_whitespace().collect::<Vec<_>>().join(" "),
            cron,
            timezone,
            job,
            command,
            then,
            description: e
                .description
                .clone()
                .unwrap_or_else(|| format!("crm-jobs {line}")),
            randomized_delay,
            quiet: e.quiet.unwrap_or(false),
            name,
        });
    }
    Ok(out)
}

impl Planned {
    /// The first start strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.timezone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Up to `n` starts at or before `t`, latest first.
    pub fn starts_before(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = t.with_timezone(&self.timezone);
        let mut inclusive = true;
        while out.len() < n {
            let Ok(p) = self.cron.find_previous_occurrence(&at, inclusive) else {
                break;
            };
            out.push(p.with_timezone(&Utc));
            at = p;
            inclusive = false;
        }
        out
    }
}

/// The next start of any entry running `job`.
pub fn next_start(plan: &[Planned], job: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    plan.iter()
        .filter(|p| p.job.as_str() == job)
        .filter_map(|p| p.next_after(now))
        .min()
}

/// The `missed`-th latest start of `job` at or before `t` (its entries together): a job whose
/// last success is older than this has missed that many scheduled starts.
pub fn deadline(
    plan: &[Planned],
    job: &str,
    t: DateTime<Utc>,
    missed: usize,
) -> Option<DateTime<Utc>> {
    let mut starts: Vec<DateTime<Utc>> = plan
        .iter()
        .filter(|p| p.job.as_str() == job)
        .flat_map(|p| p.starts_before(t, missed))
        .collect();
    starts.sort_unstable_by(|a, b| b.cmp(a));
    starts.dedup();
    starts.get(missed.saturating_sub(1)).copied()
}

/// systemd's `StateDirectory=` of the services: /var/lib/crm-jobs, where the store lives.
const STATE_DIR: &str = "crm-jobs";

/// Where the installed files are, for the generated crontab and units.
#[derive(Debug, Clone)]
pub struct Install {
    pub bin: String,
    pub config: String,
    pub secrets_dir: String,
    pub user: String,
    pub on_failure: Option<String>,
}

/// A secret a command needs: (credential name, environment variable naming its file).
fn secrets_of(config: &Config, p: &Planned) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let mut lines = vec![&p.command];
    lines.extend(p.then.iter());
    for w in lines {
        // A `then` may be any subcommand; only the jobs need secrets.
        match w[0].parse::<Job>().ok() {
            Some(Job::FetchInvoices | Job::Retry) => {
                out.push(("nio-passphrase", "CRM_JOBS_NIO_PASSPHRASE_FILE"));
            }
            Some(Job::DownloadBoletos) => {
                out.push(("fernet-key", "CRM_JOBS_CREDENTIALS_FERNET_KEY_FILE"));
            }
            Some(Job::SyncQueue) => {
                out.push(("crm-access-token", "CRM_JOBS_CRM_ACCESS_TOKEN_FILE"));
                out.push(("crm-secret-token", "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN_FILE"));
            }
            Some(Job::Renew) => {
                let step = w
                    .iter()
                    .position(|a| a == "--step")
                    .and_then(|i| w.get(i + 1));
                if step.is_none_or(|s| s == "stripe") {
                    out.push(("stripe-secret-key", "CRM_JOBS_STRIPE_SECRET_KEY_FILE"));
                }
                if step.is_none_or(|s| s == "emails") && config.smtp.user.is_some() {
                    out.push(("smtp-password", "CRM_JOBS_SMTP_PASSWORD_FILE"));
                }
            }
            Some(Job::Cleanup) | None => {}
        }
    }
    if config.alerts.to.is_some() && config.smtp.user.is_some() {
        out.push(("smtp-password", "CRM_JOBS_SMTP_PASSWORD_FILE"));
    }
    let mut seen = Vec::new();
    out.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    out
}

const GENERATED: &str = "# Generated by `crm-jobs schedule` from the config's [schedule]: change the config and\n# generate again (see the README, \"Scheduling\") rather than editing this file.";

/// The crontab: one line per entry, secrets only by file name, `CRON_TZ` before each zone.
pub fn crontab(config: &Config, plan: &[Planned], install: &Install) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# crm-jobs: the schedule, for cron.\n{GENERATED}");
    s.push_str(CRONTAB_HEADER);
    s.push_str("\nSHELL=/bin/sh\nPATH=/usr/local/bin:/usr/bin:/bin\n");
    let mut vars: Vec<(&str, &str)> = plan.iter().flat_map(|p| secrets_of(config, p)).collect();
    vars.sort();
    vars.dedup();
    for (file, var) in vars {
        let _ = writeln!(s, "{var}={}/{file}", install.secrets_dir);
    }
    let mut zone = None;
    for p in plan {
        s.push('\n');
        if zone != Some(p.timezone) {
            let _ = writeln!(s, "CRON_TZ={}", p.timezone.name());
            zone = Some(p.timezone);
        }
        let _ = writeln!(s, "# {}: {}", p.name, p.description);
        let quiet = if p.quiet { " --quiet" } else { "" };
        let run = |w: &Vec<String>| {
            format!(
                "{} --config {}{quiet} {}",
                install.bin,
                install.config,
                w.join(" ")
            )
        };
        let mut line = run(&p.command);
        if let Some(then) = &p.then {
            line = format!("{line}; {}", run(then));
        }
        let _ = writeln!(s, "{} {line}", p.expr);
    }
    s
}

const CRONTAB_HEADER: &str = r#"#
# Install as the crm-jobs user:   crontab -u crm-jobs crontab.example
# (For /etc/cron.d/crm-jobs, add the user name `crm-jobs` as a sixth field before each command.)
# Use either this crontab or the systemd timers (`crm-jobs schedule systemd`), not both.
#
# Secrets: a crontab must not hold one (`crontab -l` shows it, cron mails may too), so the lines
# below only say which file holds each; make each file readable by the crm-jobs user only:
#   install -m 0400 -o crm-jobs /dev/null /etc/crm-jobs/nio-passphrase   # then write it in
# (the same for the other files named below; see the README, "Secrets").
#
# Times: CRON_TZ makes the times of the lines after it those of its zone. cronie (RHEL, Fedora,
# Arch) honours it; Debian's and Ubuntu's cron ignore it and use the machine's zone: there, set
# the machine's zone to the one below, or give each entry `timezone` = the machine's zone in the
# config and the hours in that zone.
#
# Mail: cron mails whatever a run prints: one line per item and a one-line summary. Entries with
# `quiet = true` run with --quiet: they mail only warnings and errors.
#
# Exit codes (in the mail and in the store's `runs` table): 0 done or nothing due; 3 partial
# (some items failed, recorded and retried later); 75 already running (the start did nothing);
# 1 the run failed (read the mail); 78 bad configuration or a missing secret
# (`crm-jobs config check`). See the README, "Exit codes".
"#;

/// systemd's calendar form of a crontab expression (one line per `OnCalendar=`; two when day of
/// month and day of week are both restricted, since cron matches either).
pub fn on_calendar(p: &Planned) -> Vec<String> {
    let pat = &p.cron.pattern;
    // croner's components are not nameable: take what they say.
    let list = |all: bool, values: Vec<u16>| -> String {
        if all {
            "*".to_string()
        } else {
            values
                .iter()
                .map(|v| format!("{v:02}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let minutes = list(
        pat.minutes.is_all_set(),
        pat.minutes.get_set_values(ALL_BIT),
    );
    let hours = list(pat.hours.is_all_set(), pat.hours.get_set_values(ALL_BIT));
    let months = list(pat.months.is_all_set(), pat.months.get_set_values(ALL_BIT));
    let days = list(pat.days.is_all_set(), pat.days.get_set_values(ALL_BIT));
    const DOW: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let dow_values: Vec<u16> = pat
        .days_of_week
        .get_set_values(ALL_BIT)
        .into_iter()
        .map(|d| d % 7)
        .collect();
    let all_dow = (0..7).all(|d| dow_values.contains(&d));
    let weekdays = {
        let mut v = dow_values.clone();
        v.sort_unstable();
        v.dedup();
        v.iter()
            .map(|d| DOW[*d as usize])
            .collect::<Vec<_>>()
            .join(",")
    };
    let all_days = pat.days.is_all_set();
    let tz = p.timezone.name();
    let time = format!("{hours}:{minutes}:00");
    let line = |dow: Option<&str>, dom: &str| match dow {
        Some(w) => format!("{w} *-{months}-{dom} {time} {tz}"),
        None => format!("*-{months}-{dom} {time} {tz}"),
    };
    match (all_days, all_dow) {
        (true, true) => vec![line(None, "*")],
        (false, true) => vec![line(None, &days)],
        (true, false) => vec![line(Some(&weekdays), "*")],
        (false, false) => vec![line(None, &days), line(Some(&weekdays), "*")],
    }
}

/// The unit files: `(file name, contents)`, a `.service` and a `.timer` per entry.
pub fn systemd(config: &Config, plan: &[Planned], install: &Install) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in plan {
        let unit = format!("crm-jobs-{}", p.name);
        let mut s = String::new();
        let _ = writeln!(s, "# {unit}.service: {}.", p.description);
        let _ = writeln!(s, "# Started by {unit}.timer.\n{GENERATED}");
        let _ = writeln!(s, "#");
        let _ = writeln!(
            s,
            "#   systemctl start {unit}.service     # run it now, outside the schedule"
        );
        let _ = writeln!(
            s,
            "#   journalctl -u {unit}.service       # its logs (JSON lines)"
        );
        let _ = writeln!(s, "\n[Unit]");
        let _ = writeln!(s, "Description=crm-jobs {}: {}", p.name, p.description);
        let _ = writeln!(s, "Wants=network-online.target");
        let _ = writeln!(s, "After=network-online.target");
        // Entries of the same job share its lock: started together (at boot, by
        // Persistent=), they take turns instead of the later one exiting 75.
        let earlier: Vec<String> = plan
            .iter()
            .take_while(|q| q.name != p.name)
            .filter(|q| q.job == p.job)
            .map(|q| format!("crm-jobs-{}.service", q.name))
            .collect();
        if !earlier.is_empty() {
            let _ = writeln!(s, "After={}", earlier.join(" "));
        }
        if let Some(hook) = &install.on_failure {
            let _ = writeln!(s, "OnFailure={hook}");
        }
        let _ = writeln!(s, "\n[Service]");
        let _ = writeln!(s, "Type=oneshot");
        let _ = writeln!(s, "User={}", install.user);
        let run = |w: &Vec<String>| {
            format!(
                "{} --config {} --log-format json {}",
                install.bin,
                install.config,
                w.join(" ")
            )
        };
        let _ = writeln!(s, "ExecStart={}", run(&p.command));
        if let Some(then) = &p.then {
            let _ = writeln!(s, "ExecStartPost={}", run(then));
        }
        let secrets = secrets_of(config, p);
        if !secrets.is_empty() {
            let _ = writeln!(
                s,
                "# Secrets: systemd hands the service a private copy of each root-only file (%d, systemd 251+)."
            );
        }
        for (file, var) in secrets {
            let _ = writeln!(s, "LoadCredential={file}:{}/{file}", install.secrets_dir);
            let _ = writeln!(s, "Environment={var}=%d/{file}");
        }
        let _ = writeln!(
            s,
            "# Not failures: 3 partial (failed items are recorded and retried), 75 already running,"
        );
        let _ = writeln!(
            s,
            "# 143 stopped by SIGTERM (recorded `interrupted`). Failures: 1 (the run failed), 78 (config)."
        );
        let _ = writeln!(s, "SuccessExitStatus=3 75 143");
        // On SIGTERM a job takes nothing new and gives what is in flight a few seconds; requests
        // to the CRM, Stripe and SMTP may take up to their timeout.
        let stop = if matches!(p.job, Job::SyncQueue | Job::Renew) {
            45
        } else {
            30
        };
        let _ = writeln!(s, "TimeoutStopSec={stop}");
        let _ = writeln!(s, "StateDirectory={STATE_DIR}");
        let _ = writeln!(s, "NoNewPrivileges=yes");
        let _ = writeln!(s, "ProtectSystem=strict");
        let _ = writeln!(s, "ReadWritePaths=/var/lib/{STATE_DIR}");
        let _ = writeln!(s, "PrivateTmp=yes");
        out.push((format!("{unit}.service"), s));

        let mut t = String::new();
        let _ = writeln!(
            t,
            "# {unit}.timer: starts {unit}.service at `{}` ({}).\n{GENERATED}",
            p.expr,
            p.timezone.name()
        );
        let _ = writeln!(t, "#");
        let _ = writeln!(t, "#   systemctl enable --now {unit}.timer");
        let _ = writeln!(t, "#   systemctl list-timers 'crm-jobs-*'");
        let _ = writeln!(t, "\n[Unit]");
        let _ = writeln!(
            t,
            "Description=crm-jobs {} at `{}` ({})",
            p.name,
            p.expr,
            p.timezone.name()
        );
        let _ = writeln!(t, "\n[Timer]");
        for cal in on_calendar(p) {
            let _ = writeln!(t, "OnCalendar={cal}");
        }
        let _ = writeln!(
            t,
            "# A start missed while the machine was off runs once at the next boot."
        );
        let _ = writeln!(t, "Persistent=true");
        if p.randomized_delay != "0" {
            let _ = writeln!(t, "RandomizedDelaySec={}", p.randomized_delay);
        }
        let _ = writeln!(t, "Unit={unit}.service");
        let _ = writeln!(t, "\n[Install]");
        let _ = writeln!(t, "WantedBy=timers.target");
        out.push((format!("{unit}.timer"), t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn planned(expr: &str) -> Planned {
        let mut c = Config::default();
        c.schedule.insert(
            "x".into(),
            ScheduleEntry {
                cron: Some(expr.into()),
                command: Some("retry".into()),
                ..Default::default()
            },
        );
        plan(&c)
            .unwrap()
            .into_iter()
            .find(|p| p.name == "x")
            .unwrap()
    }

    #[test]
    fn crontab_syntax_only() {
        assert!(parse_cron("0 8,14,20 * * *").is_ok());
        assert!(parse_cron("*/15 9-17 * JAN-MAR mon-fri").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 0 L * *").unwrap_err().contains("`L`"));
        assert!(parse_cron("0 0 * * 5#2").unwrap_err().contains("`#`"));
        assert!(parse_cron("0 0 * *").unwrap_err().contains("five"));
        assert!(parse_cron("0 0 0 * * *").unwrap_err().contains("five"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("@reboot").is_err());
    }

    #[test]
    fn day_of_month_or_day_of_week_as_cron() {
        // crontab(5): both restricted = either matches. 2025-11-01 is a Saturday.
        let p = planned("0 12 1 * 1");
        let from = Utc.with_ymd_and_hms(2025, 10, 31, 0, 0, 0).unwrap();
        let first = p.next_after(from).unwrap();
        assert_eq!(first, Utc.with_ymd_and_hms(2025, 11, 1, 15, 0, 0).unwrap());
        let second = p.next_after(first).unwrap();
        // Monday 2025-11-03 at noon in São Paulo.
        assert_eq!(second, Utc.with_ymd_and_hms(2025, 11, 3, 15, 0, 0).unwrap());
        assert_eq!(
            on_calendar(&p),
            vec![
                "*-*-01 12:00:00 America/Sao_Paulo",
                "Mon *-*-* 12:00:00 America/Sao_Paulo"
            ]
        );
    }

    #[test]
    fn calendar_forms() {
        assert_eq!(
            on_calendar(&planned("0 8,14,20 * * *")),
            vec!["*-*-* 08,14,20:00:00 America/Sao_Paulo"]
        );
        assert_eq!(
            on_calendar(&planned("* * * * *")),
            vec!["*-*-* *:*:00 America/Sao_Paulo"]
        );
        assert_eq!(
            on_calendar(&planned("*/20 3 * * 1-6")),
            vec!["Mon,Tue,Wed,Thu,Fri,Sat *-*-* 03:00,20,40:00 America/Sao_Paulo"]
        );
        assert_eq!(
            on_calendar(&planned("0 0 * * 7")),
            vec!["Sun *-*-* 00:00:00 America/Sao_Paulo"]
        );
    }

    #[test]
    fn deadline_counts_scheduled_starts_back() {
        let c = Config::default();
        let p = plan(&c).unwrap();
        // fetch-invoices at 08, 14, 20 São Paulo (11, 17, 23 UTC).
        let t = Utc.with_ymd_and_hms(2025, 11, 10, 18, 0, 0).unwrap();
        assert_eq!(
            deadline(&p, "fetch-invoices", t, 2),
            Some(Utc.with_ymd_and_hms(2025, 11, 10, 11, 0, 0).unwrap())
        );
        assert_eq!(
            next_start(&p, "fetch-invoices", t),
            Some(Utc.with_ymd_and_hms(2025, 11, 10, 23, 0, 0).unwrap())
        );
        // renew's three entries count together.
        assert_eq!(
            deadline(&p, "renew", t, 1),
            Some(Utc.with_ymd_and_hms(2025, 11, 10, 12, 0, 0).unwrap())
        );
    }

    #[test]
    fn bad_entries_name_the_key() {
        let mut c = Config::default();
        c.schedule.insert(
            "nightly".into(),
            ScheduleEntry {
                cron: Some("0 1 * * *".into()),
                command: Some("status".into()),
                ..Default::default()
            },
        );
        let e = format!("{:#}", plan(&c).unwrap_err());
        assert!(e.contains("`status` is not a job"), "{e}");
        let mut c = Config::default();
        c.schedule.insert(
            "retry".into(),
            ScheduleEntry {
                timezone: Some("Brasilia".into()),
                ..Default::default()
            },
        );
        let e = format!("{:#}", plan(&c).unwrap_err());
        assert!(e.contains("not an IANA time zone"), "{e}");
    }
}
