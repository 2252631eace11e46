//! The `crm-jobs` binary: everything lives in the library; this only hands over the exit code.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    crm_jobs::main()
}
