//! The Nio Negocia API (docs/src/reference/services.md#nio-negocia-api): the encrypted bootstrap,
//! sessions, debts and PDFs.

pub mod client;
pub mod crypto;

pub use client::{Answer, NioClient, NioError, NioInvoice};
