//! Integration tests: the real binary against the sandbox on 127.0.0.1, with a temporary store.
//! They assert what an operator sees: exit codes, messages, rows in the store, files on disk.
//! No test sleeps to wait: the sandbox's holds and counters say when something happened.

mod support;

mod architecture;
mod boletos;
mod corpus;
mod docs;
mod fetch;
mod hardening;
mod imports;
mod lifecycle;
mod operate;
mod proving;
mod reading;
mod renew;
mod sync;
