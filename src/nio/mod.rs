//! The Nio Negocia API (SERVICES.md §1): the encrypted bootstrap, sessions, debts and PDFs.

pub mod client;
pub mod crypto;

pub use client::{Answer, NioClient, NioError, NioInvoice};
