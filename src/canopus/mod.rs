//! The Canopus portal (docs/src/reference/services.md#canopus-portal): a WebForms client and the
//! user's steps on it.

pub mod portal;
pub mod webforms;

pub use portal::{BoletoRow, Portal, QuotaLink};
pub use webforms::PortalError;
