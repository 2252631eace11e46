//! `crm-jobs schedule list|crontab|systemd`: the one schedule (`[schedule]` in the config) shown,
//! or written out for cron or for systemd timers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::Ctx;
use crate::exit::Code;
use crate::timers::{self, Install};

/// `schedule` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every entry: its job, expression, zone, next start and command.
    List,
    /// Print the crontab (install it with `crontab -u crm-jobs FILE`).
    Crontab(Paths),
    /// Write one .service and one .timer per entry into a folder.
    Systemd(SystemdArgs),
}

/// Where the installed program, config and secrets live (as the generated lines name them).
#[derive(Debug, clap::Args)]
pub struct Paths {
    /// The installed program.
    #[arg(long, default_value = "/usr/local/bin/crm-jobs")]
    pub bin: String,
    /// The installed config file, as the commands will name it.
    #[arg(long, default_value = "/etc/crm-jobs/config.toml")]
    pub config_path: String,
    /// The folder of the secret files (nio-passphrase, fernet-key, crm-access-token, ...).
    #[arg(long, default_value = "/etc/crm-jobs")]
    pub secrets_dir: String,
}

/// Arguments of `schedule systemd`.
#[derive(Debug, clap::Args)]
pub struct SystemdArgs {
    /// Folder to write the units into (e.g. /etc/systemd/system); created if missing.
    #[arg(long)]
    pub out: PathBuf,
    /// The user the services run as.
    #[arg(long, default_value = "crm-jobs")]
    pub user: String,
    /// A unit started when a service fails (`OnFailure=`), e.g. `notify-failure@%n.service`.
    #[arg(long)]
    pub on_failure: Option<String>,
    #[command(flatten)]
    pub paths: Paths,
}

fn install(paths: &Paths, user: &str, on_failure: Option<String>) -> Install {
    Install {
        bin: paths.bin.clone(),
        config: paths.config_path.clone(),
        secrets_dir: paths.secrets_dir.trim_end_matches('/').to_string(),
        user: user.to_string(),
        on_failure,
    }
}

pub fn run(ctx: &Ctx, command: Command) -> Result<Code> {
    let config = &ctx.loaded.config;
    let plan = &ctx.plan;
    match command {
        Command::List => {
            let now = ctx.clock.now();
            if ctx.printer.json {
                let entries: Vec<_> = plan
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "job": p.job,
                            "cron": p.expr,
                            "timezone": p.timezone.name(),
                            "next_start": p.next_after(now).map(crate::clock::to_store),
                            "command": p.command.join(" "),
                            "then": p.then.as_ref().map(|t| t.join(" ")),
                            "description": p.description,
                        })
                    })
                    .collect();
                ctx.printer.json_out(&json!({ "schedule": entries }));
                return Ok(Code::Success);
            }
            crate::outln!(
                "{:<18} {:<17} {:<16} {:<26} command",
                "entry",
                "job",
                "cron",
                "next start"
            );
            for p in plan {
                let next = p
                    .next_after(now)
                    .map(|t| {
                        t.with_timezone(&p.timezone)
                            .format("%Y-%m-%d %H:%M %Z")
                            .to_string()
                    })
                    .unwrap_or_else(|| "never".into());
                let mut command = p.command.join(" ");
                if let Some(then) = &p.then {
                    command = format!("{command}; {}", then.join(" "));
                }
                crate::outln!(
                    "{:<18} {:<17} {:<16} {:<26} {command}",
                    p.name,
                    p.job,
                    p.expr,
                    next
                );
            }
            Ok(Code::Success)
        }
        Command::Crontab(paths) => {
            let text = timers::crontab(config, plan, &install(&paths, "crm-jobs", None));
            crate::output::stdout(text.as_bytes());
            Ok(Code::Success)
        }
        Command::Systemd(args) => {
            let inst = install(&args.paths, &args.user, args.on_failure.clone());
            let files = timers::systemd(config, plan, &inst);
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("cannot create `{}`", args.out.display()))?;
            for (name, text) in &files {
                write_public(&args.out, name, text.as_bytes())?;
            }
            // Units of entries no longer in the schedule stay until removed by hand.
            let mut stale: Vec<String> = std::fs::read_dir(&args.out)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| {
                            n.starts_with("crm-jobs-")
                                && (n.ends_with(".service") || n.ends_with(".timer"))
                                && !files.iter().any(|(f, _)| f == n)
                        })
                        .collect()
                })
                .unwrap_or_default();
            stale.sort();
            if !ctx.output.quiet {
                crate::outln!(
                    "wrote {} units into {} ({} entries); then: systemctl daemon-reload && systemctl enable --now {}",
                    files.len(),
                    args.out.display(),
                    plan.len(),
                    plan.iter()
                        .map(|p| format!("crm-jobs-{}.timer", p.name))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            for s in stale {
                tracing::warn!(
                    "`{s}` in {} is not in the schedule any more: disable and remove it (`systemctl disable --now {s}`)",
                    args.out.display()
                );
            }
            Ok(Code::Success)
        }
    }
}

/// Writes a unit file atomically, readable by all (systemd units are not secret).
fn write_public(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in `{}`", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| {
            format!(
                "cannot write `{}` (is the disk full?)",
                dir.join(name).display()
            )
        })?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dir.join(name))
        .with_context(|| format!("cannot write `{}`", dir.join(name).display()))?;
    Ok(())
}
