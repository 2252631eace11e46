//! Pure domain rules of the back office (no I/O): CPF, money, PIX, boletos, the invoice
//! schedule of a contract and the matching of expected invoices against Nio's answer.

pub mod boleto;
pub mod cpf;
pub mod matching;
pub mod money;
pub mod pix;
pub mod schedule;
