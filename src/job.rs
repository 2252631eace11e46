//! The jobs that record runs (and can be paused, scheduled, alerted on and pinged): one enum,
//! the one place their names are written. A leaf: it imports nothing of the crate.

use std::fmt;
use std::str::FromStr;

/// A job that records runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    FetchInvoices,
    Retry,
    DownloadBoletos,
    SyncQueue,
    Cleanup,
    Renew,
}

impl Job {
    /// Every job, in the order `status` shows them.
    pub const ALL: [Job; 6] = [
        Job::FetchInvoices,
        Job::Retry,
        Job::DownloadBoletos,
        Job::SyncQueue,
        Job::Cleanup,
        Job::Renew,
    ];

    /// The job's name: its subcommand, and how the store, the schedule and pings name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Job::FetchInvoices => "fetch-invoices",
            Job::Retry => "retry",
            Job::DownloadBoletos => "download-boletos",
            Job::SyncQueue => "sync-queue",
            Job::Cleanup => "cleanup",
            Job::Renew => "renew",
        }
    }

    /// Every job's name, for messages: `fetch-invoices, retry, ...`.
    pub fn names() -> String {
        Job::ALL.map(Job::as_str).join(", ")
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is not a job's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAJob(pub String);

impl fmt::Display for NotAJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a job; jobs: {}", self.0, Job::names())
    }
}

impl std::error::Error for NotAJob {}

impl FromStr for Job {
    type Err = NotAJob;

    fn from_str(s: &str) -> Result<Job, NotAJob> {
        Job::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| NotAJob(s.to_string()))
    }
}

impl serde::Serialize for Job {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Job;

    #[test]
    fn every_name_reads_back_as_its_job() {
        for job in Job::ALL {
            assert_eq!(job.as_str().parse::<Job>(), Ok(job));
        }
        let err = "fetch".parse::<Job>().unwrap_err().to_string();
        assert_eq!(
            err,
            "`fetch` is not a job; jobs: fetch-invoices, retry, download-boletos, sync-queue, cleanup, renew"
        );
    }
}
