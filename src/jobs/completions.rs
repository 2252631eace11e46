//! `crm-jobs completions SHELL` and `crm-jobs man`: shell completions and the man page, made
//! from the command line's own definition.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::Code;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completions(args: Args) -> Result<Code> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "crm-jobs", &mut out);
    crate::output::stdout(&out);
    Ok(Code::Success)
}

/// Prints the man page (roff) on stdout: `crm-jobs man > /usr/local/share/man/man1/crm-jobs.1`.
pub fn man() -> Result<Code> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    crate::output::stdout(&out);
    Ok(Code::Success)
}
