//! Pure domain rules of the back office (no I/O): CPF, money, PIX, boletos, the invoice
//! due dates of a contract and the matching of expected invoices against Nio's answer.

pub mod boleto;
pub mod cpf;
pub mod due_dates;
pub mod matching;
pub mod money;
pub mod pix;
