//! `crm-jobs completions SHELL` and `crm-jobs man`: shell completions and the man page, made
//! from the command line's own definition.

use anyhow::Result;

use crate::exit::Code;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `cli`: the command line's definition (`Cli::command()`), handed down by the dispatch.
pub fn completions(args: Args, mut cmd: clap::Command) -> Result<Code> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "crm-jobs", &mut out);
    crate::output::stdout(&out);
    Ok(Code::Success)
}

/// Prints the man page (roff) on stdout: `crm-jobs man > /usr/local/share/man/man1/crm-jobs.1`.
pub fn man(cli: clap::Command) -> Result<Code> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cli).render(&mut out)?;
    crate::output::stdout(&out);
    Ok(Code::Success)
}
