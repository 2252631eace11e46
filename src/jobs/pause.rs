//! `crm-jobs pause JOB` / `resume JOB`: a paused job's starts exit 0 at once with one line
//! saying so, and each skip is recorded.

use anyhow::Result;

use super::Ctx;
use crate::clock;
use crate::exit::{Code, CodedError};
use crate::job::Job;

/// Arguments of `pause`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The job: fetch-invoices, retry, download-boletos, sync-queue, cleanup or renew.
    pub job: String,
    /// Why, for whoever looks at `status` or the skipped starts.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Arguments of `resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The job to resume.
    pub job: String,
}

fn check(job: &str) -> Result<()> {
    job.parse::<Job>().map(drop).map_err(|e| {
        CodedError {
            code: Code::Usage,
            message: e.to_string(),
        }
        .into()
    })
}

pub fn pause(ctx: &Ctx, args: PauseArgs) -> Result<Code> {
    check(&args.job)?;
    ctx.open_store()?.pause(
        &args.job,
        args.reason.as_deref(),
        &clock::to_store(ctx.clock.now()),
    )?;
    ctx.printer.say(&format!(
        "`{}` is paused: its starts exit 0 at once until `crm-jobs resume {}`",
        args.job, args.job
    ));
    Ok(Code::Success)
}

pub fn resume(ctx: &Ctx, args: ResumeArgs) -> Result<Code> {
    check(&args.job)?;
    let was = ctx.open_store()?.resume(&args.job)?;
    ctx.printer.say(&if was {
        format!("`{}` is resumed", args.job)
    } else {
        format!("`{}` was not paused", args.job)
    });
    Ok(Code::Success)
}
