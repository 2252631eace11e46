//! Operating the jobs: pause and resume, status, the metrics textfile, completions, man page.

use crate::support::*;

#[test]
fn a_paused_job_exits_at_once_and_the_skip_is_recorded() {
    let env = Env::new();
    let c = env.one_contract(1);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("100", &[1])]);
    let out = env.run(&[
        "pause",
        "fetch-invoices",
        "--reason",
        "manutenção do portal",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = env.run(&["fetch-invoices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "`fetch-invoices` is paused since 2025-11-10T15:00:00.000Z: manutenção do portal; this start does nothing (`crm-jobs resume fetch-invoices` resumes it)"
    );
    let skips: i64 = env.query("SELECT COUNT(*) FROM job_skips WHERE job = 'fetch-invoices'");
    assert_eq!(skips, 1);
    let runs: i64 = env.query("SELECT COUNT(*) FROM runs");
    assert_eq!(runs, 0);
    assert_eq!(env.run(&["resume", "fetch-invoices"]).code, 0);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let runs: i64 = env.query("SELECT COUNT(*) FROM runs");
    assert_eq!(runs, 1);
    let bad = env.run(&["pause", "fetch"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("`fetch` is not a job; jobs: fetch-invoices, retry, download-boletos, sync-queue, cleanup, renew"));
}

#[test]
fn status_shows_the_jobs_and_the_work_waiting() {
    let env = Env::new();
    let c = env.one_contract(2);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("200", &[1])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    env.run(&["pause", "sync-queue"]);
    let out = env.run(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    assert_eq!(jobs[0]["job"], "fetch-invoices");
    assert_eq!(jobs[0]["last_run"]["status"], "success");
    assert_eq!(jobs[0]["consecutive_failures"], 0);
    assert!(jobs[3]["paused"].is_object(), "{v}");
    assert_eq!(v["work"]["invoices"]["success"], 5);
    let text = env.run(&["status"]);
    assert!(
        text.stdout.contains("fetch-invoices    success"),
        "{text:?}"
    );
    assert!(
        text.stdout.contains("invoices:  5 pending, 5 success"),
        "{text:?}"
    );
}

#[test]
fn every_run_writes_the_metrics_textfile() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[metrics]\ntextfile_dir = \"metrics\"\n\n{cfg}"),
    )
    .unwrap();
    let c = env.one_contract(3);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("300", &[1])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let text = std::fs::read_to_string(env.path("metrics/crm_jobs.prom")).unwrap();
    assert!(
        text.contains("crm_jobs_last_success_timestamp_seconds{job=\"fetch-invoices\"} 1762786800"),
        "{text}"
    );
    assert!(
        text.contains("crm_jobs_last_run_items{job=\"fetch-invoices\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("crm_jobs_paused{job=\"renew\"} 0"), "{text}");
    assert!(text.contains("# TYPE crm_jobs_queue_items gauge"), "{text}");
}

#[test]
fn completions_and_the_man_page() {
    let env = Env::new();
    let bash = env.run(&["completions", "bash"]);
    assert_eq!(bash.code, 0);
    assert!(
        bash.stdout.contains("fetch-invoices") && bash.stdout.contains("complete"),
        "{bash:?}"
    );
    // A reader that goes away early (`| head`) is not an error.
    let mut head = env
        .cmd(&["completions", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(head.stdout.take());
    let closed = head.wait_with_output().unwrap();
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let man = env.run(&["man"]);
    assert_eq!(man.code, 0);
    assert!(
        man.stdout.contains(".TH crm-jobs"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
}

#[test]
fn health_pings_follow_the_healthchecks_protocol_and_never_fail_the_job() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let base = format!("http://{}/ping/abc", env.sandbox.addr);
    std::fs::write(
        env.path("config.toml"),
        format!(
            "[pings]\nfetch-invoices = \"{base}\"\nretry = \"http://127.0.0.1:9/nowhere\"\n\n{cfg}"
        ),
    )
    .unwrap();
    let c = env.one_contract(4);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("400", &[1])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    env.sandbox.nio.set_captcha(true);
    env.db().execute("DELETE FROM nio_session", []).unwrap();
    assert_eq!(env.run(&["fetch-invoices"]).code, 1);
    let pings = env.sandbox.pings.received();
    let paths: Vec<&str> = pings.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/ping/abc/start?rid=1",
            "/ping/abc?rid=1",
            "/ping/abc/start?rid=2",
            "/ping/abc/1?rid=2"
        ]
    );
    assert!(
        pings[1].1.starts_with("success: 1 contract(s): 1 ok"),
        "{pings:?}"
    );
    // A ping that cannot be delivered is only a warning.
    let out = env.run(&["retry"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("health ping failed"), "{out:?}");
}

#[test]
fn doctor_names_each_fault_and_what_to_do() {
    let env = Env::new();
    // Credentials sealed with one key, read with another; an unreachable CRM; a file where the
    // downloads folder should be; no Stripe key.
    let mut child = env
        .cmd(&[
            "credentials",
            "set",
            "--ponto-venda",
            "17.308",
            "--usuario",
            "1",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"x\n").unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::write(env.path("downloads"), "not a folder").unwrap();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let cfg = cfg.replacen(
        &format!("base_url = \"{}\"", env.sandbox.crm_base_url()),
        "base_url = \"http://127.0.0.1:9/crm\"",
        1,
    );
    let cfg = format!("[pings]\nretry = \"https://no-such-host.invalid/ping\"\n\n{cfg}");
    std::fs::write(env.path("config.toml"), cfg).unwrap();
    // The SMTP server refuses the password.
    let out = env
        .cmd(&["doctor"])
        .env("CRM_JOBS_FERNET_KEY", crm_jobs::secret_box::generate_key())
        .env_remove("CRM_JOBS_STRIPE_SECRET_KEY")
        .env("CRM_JOBS_SMTP_PASSWORD", "wrong")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "fail  credentials  sales point 17.308: the stored password does not decrypt with this Fernet key",
        "is not a folder: point `[downloads] dir` to a folder",
        "fail  crm          request to the crm service could not connect",
        "warn  secrets      `CRM_JOBS_STRIPE_SECRET_KEY` is not set: renew --step stripe will refuse to start",
        "ok    nio          ",
        "ok    store        ",
        "fail  smtp         the SMTP server `127.0.0.1` refused the credentials of `[smtp] user` `sandbox` (permanent error (535): 5.7.8 Authentication credentials invalid): check `CRM_JOBS_SMTP_PASSWORD` (or `[smtp] password_file`) and `[smtp] user`",
        "warn  pings        `retry`: `no-such-host.invalid` does not resolve: its pings will fail (the job will not); check DNS or `[pings] retry`",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}

#[test]
fn the_report_is_one_self_contained_page_that_renders_in_chromium() {
    let env = Env::new();
    let c = env.one_contract(5);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("500", &[1, 2])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    let out = env.run(&[
        "report",
        "--out",
        env.path("report.html").to_str().unwrap(),
        "--since",
        "2025-11-01",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let html = std::fs::read_to_string(env.path("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 7, "seven charts");
    assert!(
        !html.contains("<script") && !html.contains("src=") && !html.contains("href="),
        "no external asset"
    );
    assert!(html.contains("Invoice outcomes per safra") && html.contains("2025-06"));
    assert!(html.contains("Safra against safra") && html.contains("invoice 01"));

    // Rendered by a real browser: Debian's Chromium, installed by .ci/run.
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!(
            "skipping the Chromium check: /usr/bin/chromium is not installed (`.ci/run` installs it)"
        );
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let rendered = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", env.path("report.html").display()),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&rendered.stdout);
    let log = String::from_utf8_lossy(&rendered.stderr);
    assert!(rendered.status.success(), "{log}");
    assert_eq!(dom.matches("<svg").count(), 7, "{dom}");
    assert!(dom.contains("Success per day and job"));
    assert!(
        !log.contains("Uncaught") && !log.contains(":CONSOLE("),
        "console errors: {log}"
    );
}

#[test]
fn an_incident_sends_one_email_when_it_opens_and_one_when_it_clears() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[alerts]\nto = \"Operação <ops@example.com>\"\nconsecutive_failures = 2\n\n{cfg}"),
    )
    .unwrap();
    let c = env.one_contract(6);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("600", &[1])]);
    env.sandbox.nio.set_captcha(true);
    assert_eq!(env.run(&["fetch-invoices"]).code, 1);
    assert!(env.sandbox.smtp.received().is_empty());
    let second = env.run(&["fetch-invoices"]);
    assert_eq!(second.code, 1);
    assert!(
        second
            .stderr
            .contains("alert opened for `fetch-invoices`: 2 failed runs in a row"),
        "{second:?}"
    );
    assert_eq!(env.run(&["fetch-invoices"]).code, 1);
    let got = env.sandbox.smtp.received();
    assert_eq!(got.len(), 1, "one email per incident");
    assert_eq!(got[0].to, vec!["ops@example.com".to_string()]);
    env.sandbox.nio.set_captcha(false);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    assert_eq!(
        env.sandbox.smtp.received().len(),
        2,
        "and one when it clears"
    );
    let subjects: String =
        env.query("SELECT group_concat(subject, ' | ') FROM email_outbox WHERE kind = 'alert'");
    assert_eq!(
        subjects,
        "🚨 crm-jobs: fetch-invoices: 2 failed runs in a row | ✅ crm-jobs: fetch-invoices voltou ao normal (consecutive_failures)"
    );
}

fn run_at(env: &Env, now: &str, args: &[&str]) -> std::process::Output {
    env.cmd(args).env("CRM_JOBS_NOW", now).output().unwrap()
}

#[test]
fn the_schedule_alerts_a_job_overdue_and_a_run_idle_with_work_waiting() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[alerts]\nto = \"ops@example.com\"\n\n{cfg}"),
    )
    .unwrap();
    let c = env.one_contract(7);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("700", &[1])]);
    // Day 1, 12:00: the first run in the store; nothing is overdue yet.
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    assert!(env.sandbox.smtp.received().is_empty());
    // Day 2, 12:00: fetch-invoices (08, 14, 20) missed 20:00 and 08:00; renew's three entries
    // missed their starts too. sync-queue's run is the heartbeat that says so.
    let day2 = "2025-11-11T12:00:00-03:00";
    let out = run_at(&env, day2, &["sync-queue"]);
    assert!(out.status.success(), "{out:?}");
    let subjects = || -> String {
        env.query("SELECT group_concat(subject, ' | ') FROM (SELECT subject FROM email_outbox WHERE kind = 'alert' ORDER BY id)")
    };
    assert_eq!(
        subjects(),
        "🚨 crm-jobs: fetch-invoices: never succeeded, though scheduled since 2025-11-10 20:00 -03 (2 scheduled start(s) missed; see `crm-jobs schedule list`) | 🚨 crm-jobs: renew: never succeeded, though scheduled since 2025-11-11 02:00 -03 (2 scheduled start(s) missed; see `crm-jobs schedule list`)"
    );
    // Still overdue an hour later: no second email.
    run_at(&env, "2025-11-11T13:00:00-03:00", &["sync-queue"]);
    assert_eq!(env.sandbox.smtp.received().len(), 2);
    // A run of fetch-invoices that takes no contract while one is due: idle; and it is no
    // success of... it is a success, so the overdue incident clears.
    let out = run_at(&env, day2, &["fetch-invoices", "--safra", "2019-01"]);
    assert!(out.status.success(), "{out:?}");
    // A real run clears the idle incident.
    let out = run_at(&env, day2, &["fetch-invoices"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        subjects(),
        [
            "🚨 crm-jobs: fetch-invoices: never succeeded, though scheduled since 2025-11-10 20:00 -03 (2 scheduled start(s) missed; see `crm-jobs schedule list`)",
            "🚨 crm-jobs: renew: never succeeded, though scheduled since 2025-11-11 02:00 -03 (2 scheduled start(s) missed; see `crm-jobs schedule list`)",
            "🚨 crm-jobs: fetch-invoices: the last run did nothing while 1 item(s) were waiting for it",
            "✅ crm-jobs: fetch-invoices voltou ao normal (stale)",
            "✅ crm-jobs: fetch-invoices voltou ao normal (idle)",
        ]
        .join(" | ")
    );
    assert_eq!(env.sandbox.smtp.received().len(), 5);
}

#[test]
fn the_repo_crontab_and_units_are_generated_from_the_example_config() {
    let env = Env::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("config.example.toml");
    let example = example.to_str().unwrap();
    let regenerate = "regenerate them: crm-jobs --config config.example.toml schedule crontab > crontab.example && crm-jobs --config config.example.toml schedule systemd --out systemd";
    let out = env.run(&["--config", example, "schedule", "crontab"]);
    assert_eq!(out.code, 0, "{out:?}");
    let repo = std::fs::read_to_string(root.join("crontab.example")).unwrap();
    assert!(
        out.stdout == repo,
        "crontab.example differs at `{}`; {regenerate}",
        first_difference(&out.stdout, &repo)
    );
    let dir = env.path("units");
    let out = env.run(&[
        "--config",
        example,
        "schedule",
        "systemd",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let names = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let generated = names(&dir);
    assert_eq!(generated, names(&root.join("systemd")), "{regenerate}");
    assert_eq!(generated.len(), 20);
    for n in generated {
        let a = std::fs::read_to_string(dir.join(&n)).unwrap();
        let b = std::fs::read_to_string(root.join("systemd").join(&n)).unwrap();
        assert!(
            a == b,
            "systemd/{n} differs at `{}`; {regenerate}",
            first_difference(&a, &b)
        );
    }
}

fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("{x}` (generated) vs `{y}` (repo)"))
        .unwrap_or_else(|| "the end".into())
}

#[test]
fn schedule_entries_change_the_crontab_units_and_status() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!(
            "{cfg}\n[schedule.fetch-invoices]\ncron = \"15 6-18/6 * * MON-FRI\"\ntimezone = \"America/Manaus\"\n\n[schedule.renew-stripe]\nenabled = false\n\n[schedule.boletos-late]\ncron = \"0 12 10,20 * *\"\ncommand = \"download-boletos --ponto-venda 17.308\"\n"
        ),
    )
    .unwrap();
    let out = env.run(&["schedule", "crontab"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("CRON_TZ=America/Manaus\n# fetch-invoices: Nio invoices of the 20 contracts fetched least recently\n15 6-18/6 * * MON-FRI /usr/local/bin/crm-jobs --config /etc/crm-jobs/config.toml fetch-invoices --limit 20 --origin automatic\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\nCRON_TZ=America/Sao_Paulo\n# retry:"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("renew --step stripe"));
    assert!(out.stdout.contains("0 12 10,20 * * /usr/local/bin/crm-jobs --config /etc/crm-jobs/config.toml download-boletos --ponto-venda 17.308\n"));
    let dir = env.path("units");
    // A unit of an entry that is no longer scheduled: named, never deleted.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("crm-jobs-renew-stripe.timer"), "old").unwrap();
    let out = env.run(&[
        "schedule",
        "systemd",
        "--out",
        dir.to_str().unwrap(),
        "--on-failure",
        "notify@%n.service",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("`crm-jobs-renew-stripe.timer` in ")
            && out.stderr.contains("is not in the schedule any more: disable and remove it (`systemctl disable --now crm-jobs-renew-stripe.timer`)"),
        "{out:?}"
    );
    std::fs::remove_file(dir.join("crm-jobs-renew-stripe.timer")).unwrap();
    let timer = std::fs::read_to_string(dir.join("crm-jobs-fetch-invoices.timer")).unwrap();
    assert!(timer.contains("\nOnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 06,12,18:15:00 America/Manaus\nPersistent=true\nRandomizedDelaySec=2min\n") || timer.contains("OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 06,12,18:15:00 America/Manaus\n"), "{timer}");
    assert!(timer.contains("Persistent=true"));
    let service = std::fs::read_to_string(dir.join("crm-jobs-boletos-late.service")).unwrap();
    assert!(
        service.contains("OnFailure=notify@%n.service\n"),
        "{service}"
    );
    assert!(service.contains("LoadCredential=fernet-key:/etc/crm-jobs/fernet-key\nEnvironment=CRM_JOBS_CREDENTIALS_FERNET_KEY_FILE=%d/fernet-key\n"), "{service}");
    assert!(!dir.join("crm-jobs-renew-stripe.timer").exists());
    // status: the next start of each job; 2025-11-10 is a Monday, 12:00 in São Paulo is 11:00
    // in Manaus, so fetch-invoices next starts at 12:15 Manaus (16:15 UTC).
    let v: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["jobs"][0]["next_start"], "2025-11-10T16:15:00.000Z");
    assert_eq!(v["jobs"][2]["next_start"], "2025-11-11T10:30:00.000Z");
    let list = env.run(&["schedule", "list"]);
    assert!(
        list.stdout
            .contains("boletos-late       download-boletos  0 12 10,20 * *   2025-11-20 12:00 -03"),
        "{list:?}"
    );
}

#[test]
fn a_bad_schedule_entry_is_a_config_error_naming_it() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    for (entry, message) in [
        (
            "[schedule.retry]\ncron = \"0 25 * * *\"\n",
            "`[schedule.retry] cron` = `0 25 * * *`:",
        ),
        (
            "[schedule.retry]\ncron = \"0 0 L * *\"\n",
            "`[schedule.retry] cron` = `0 0 L * *`: `L` is not crontab(5) syntax",
        ),
        (
            "[schedule.retry]\ncommand = \"retry --max 3\"\n",
            "`[schedule.retry] command` = `retry --max 3` is not a crm-jobs command line: unexpected argument '--max' found",
        ),
        (
            "[schedule.nightly]\ncron = \"@daily\"\n",
            "`[schedule.nightly]` has no `command`",
        ),
        (
            "[schedule.retry]\nwhen = \"daily\"\n",
            "unknown field `when`",
        ),
    ] {
        std::fs::write(env.path("config.toml"), format!("{cfg}\n{entry}")).unwrap();
        let out = env.run(&["schedule", "list"]);
        assert_eq!(out.code, 78, "{out:?}");
        assert!(out.stderr.contains(message), "{entry}: {out:?}");
    }
}

#[test]
fn doctor_changes_nothing_on_a_fresh_install() {
    let env = Env::new();
    let out = env.run(&["doctor", "--offline"]);
    assert!(
        out.stdout
            .contains("does not exist yet: the first job run creates it"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("does not exist yet: the first download creates it"),
        "{out:?}"
    );
    assert!(!env.path("store").exists(), "doctor created the store");
    assert!(
        !env.downloads().exists(),
        "doctor created the downloads folder"
    );
}

#[test]
fn report_out_to_a_pipe_writes_into_it_and_never_replaces_it() {
    use std::os::unix::fs::FileTypeExt as _;
    let env = Env::new();
    let fifo = env.path("report.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = env.run(&["report", "--out", fifo.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let html = reader.join().unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html:.80}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the pipe was replaced by a file"
    );
}

#[test]
fn a_ping_url_of_a_job_with_a_dash_can_come_from_the_environment() {
    let env = Env::new();
    let c = env.one_contract(8);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("800", &[1])]);
    let base = format!("http://{}/ping/env", env.sandbox.addr);
    let out = env
        .cmd(&["fetch-invoices"])
        .env("CRM_JOBS_PINGS_FETCH_INVOICES", &base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let paths: Vec<String> = env
        .sandbox
        .pings
        .received()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(paths, vec!["/ping/env/start?rid=1", "/ping/env?rid=1"]);
}

/// Snapshots of what an operator reads, with the parts that change from run to run (temporary
/// folders, durations, ports) filtered to stable words. Update them with
/// `INSTA_UPDATE=always cargo test --test cli snapshot` and review the diff.
#[test]
fn snapshot_status_schedule_and_doctor_output() {
    let env = Env::new();
    let c = env.one_contract(9);
    env.sandbox
        .nio
        .set_customer(c.digits(), vec![debt("900", &[1])]);
    assert_eq!(env.run(&["fetch-invoices"]).code, 0);
    assert_eq!(env.run(&["sync-queue"]).code, 0);
    env.run(&["pause", "cleanup", "--reason", "manutenção"]);
    let tmp = env.dir.path().display().to_string();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(&tmp), "[TMP]");
    settings.add_filter(r" +\d+(\.\d+)?(ms|s) ", " [DURATION] ");
    settings.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    // What the machine has: free space, and whether a CA bundle is installed.
    settings.add_filter(r"(?m)^\w+ +downloads +\d+ MB free.*$", "[free space]");
    settings.add_filter(r"(?m)^warn +tls .*\n", "");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path("snapshots");
    settings.bind(|| {
        insta::assert_snapshot!("status", env.run(&["status"]).stdout);
        insta::assert_snapshot!("schedule_list", env.run(&["schedule", "list"]).stdout);
        insta::assert_snapshot!("doctor_offline", env.run(&["doctor", "--offline"]).stdout);
    });
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

#[test]
fn status_shows_how_far_a_run_in_progress_got() {
    let env = Env::new();
    crate::lifecycle::some_contracts(&env, 50, 3);
    // The second contract's debts request waits: the run is in progress, one contract done.
    env.sandbox
        .faults
        .hold_after(crm_jobs::sandbox::Route::NioDebts, 1);
    let child = env.spawn(&["fetch-invoices", "--concurrency", "1"]);
    assert_eq!(
        env.sandbox
            .faults
            .wait_held(crm_jobs::sandbox::Route::NioDebts, 1, WAIT),
        1
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    let last = &v["jobs"][0]["last_run"];
    assert_eq!(last["status"], "running", "{v}");
    assert_eq!(last["items_planned"], 3, "{v}");
    let text = env.run(&["status"]).stdout;
    assert!(text.contains(" of 3 "), "{text}");
    assert!(text.contains("(run #1 running)"), "{text}");
    env.sandbox.faults.release_all();
    assert!(child.wait_with_output().unwrap().status.success());
    let v: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["jobs"][0]["last_run"]["status"], "success");
    assert_eq!(v["jobs"][0]["last_run"]["items_ok"], 3);
}

/// The README's first command: the demo runs every job end to end against the sandbox (a
/// stricter import once broke it with no test noticing).
#[test]
fn the_demo_runs_every_job_end_to_end() {
    let env = Env::new();
    let out = env.run(&[
        "demo",
        "--contracts",
        "8",
        "--clients",
        "6",
        "--latency-ms",
        "1",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    for job in [
        "fetch-invoices run #",
        "download-boletos run #",
        "renew run #",
        "sync-queue run #",
        "cleanup run #",
    ] {
        assert!(out.stderr.contains(job), "`{job}` missing: {out:?}");
    }
}
