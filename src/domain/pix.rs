//! PIX "copia e cola" codes (EMV BR Code): checking the TLV structure and the CRC16 field `63`
//! of a scraped code, and building valid static codes for the sandbox.

use crc::{CRC_16_IBM_3740, Crc};

/// CRC16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor).
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Why a PIX code is not valid. Positions are 0-based character offsets of the field start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PixError {
    /// Nothing but whitespace.
    #[error("the PIX code is empty")]
    Empty,
    /// A field without a 2-digit id and 2-digit length, or running past the end of the code.
    #[error(
        "the PIX code is malformed at position {position} (expected a field: 2-digit id, 2-digit length, value)"
    )]
    Malformed {
        /// 0-based character offset of the bad field.
        position: usize,
    },
    /// The code does not end in the CRC field `63` of length `04`.
    #[error("the PIX code has no CRC field (`6304…` at the end)")]
    MissingCrc,
    /// The CRC field does not match the content: the code was copied or scraped wrong.
    #[error("the PIX code's CRC is {found} but its content gives {expected} (scraped wrong?)")]
    CrcMismatch {
        /// The CRC computed from the content, upper-case hex.
        expected: String,
        /// The CRC written in the code, as found.
        found: String,
    },
}

/// CRC16/CCITT-FALSE of the UTF-8 bytes of `payload`.
pub fn crc16(payload: &str) -> u16 {
    CRC16.checksum(payload.as_bytes())
}

/// Checks a PIX copia-e-cola code: well-formed TLV fields (lengths count characters) ending in
/// field `63` of length `04` whose value is the CRC16 of everything before it, `6304` included.
/// Surrounding whitespace is ignored; lower-case hex in the CRC is accepted.
pub fn validate(code: &str) -> Result<(), PixError> {
    let code = code.trim();
    if code.is_empty() {
        return Err(PixError::Empty);
    }
    let chars: Vec<char> = code.chars().collect();
    let mut pos = 0;
    let mut last_field: Option<(usize, String)> = None;
    while pos < chars.len() {
        let id = two_digits(&chars, pos).ok_or(PixError::Malformed { position: pos })?;
        let len = two_digits(&chars, pos + 2).ok_or(PixError::Malformed { position: pos })?;
        let end = pos + 4 + len as usize;
        if end > chars.len() {
            return Err(PixError::Malformed { position: pos });
        }
        if id == 63 && end != chars.len() {
            // A CRC field must be the last one.
            return Err(PixError::Malformed { position: pos });
        }
        if id == 63 && len != 4 {
            return Err(PixError::MissingCrc);
        }
        last_field = Some((pos, chars[pos..end].iter().collect()));
        pos = end;
    }
    let Some((crc_pos, field)) = last_field.filter(|(_, f)| f.starts_with("6304")) else {
        return Err(PixError::MissingCrc);
    };
    let found = &field[4..];
    let covered: String = chars[..crc_pos + 4].iter().collect();
    let expected = crc16(&covered);
    let written = (found.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u16::from_str_radix(found, 16).ok())
        .flatten();
    if written == Some(expected) {
        Ok(())
    } else {
        Err(PixError::CrcMismatch {
            expected: format!("{expected:04X}"),
            found: found.to_string(),
        })
    }
}

/// Appends the CRC field (`6304` + upper-case hex CRC) to a payload that has no CRC field yet.
pub fn with_crc(payload_without_crc_field: &str) -> String {
    let covered = format!("{payload_without_crc_field}6304");
    let crc = crc16(&covered);
    format!("{covered}{crc:04X}")
}

/// Builds a valid static PIX BR Code: payload format `01`, merchant account (GUI
/// `br.gov.bcb.pix` and the key), category `0000`, currency `986`, the amount (omitted when not
/// positive), country `BR`, the merchant name (truncated to 25 characters) and city (15), the
/// txid (`***` when empty), and the CRC.
///
/// Values longer than their field allows are truncated (key 77 characters, txid 25) so that the
/// result is always well formed. For the sandbox (and tests) only.
#[cfg(any(test, feature = "sandbox"))]
pub fn build(
    key: &str,
    merchant_name: &str,
    city: &str,
    amount_centavos: i64,
    txid: &str,
) -> String {
    let account = format!(
        "{}{}",
        tlv("00", "br.gov.bcb.pix"),
        tlv("01", &truncate(key, 77))
    );
    let txid = if txid.is_empty() {
        "***".to_string()
    } else {
        truncate(txid, 25)
    };
    let mut payload = String::new();
    payload.push_str(&tlv("00", "01"));
    payload.push_str(&tlv("26", &account));
    payload.push_str(&tlv("52", "0000"));
    payload.push_str(&tlv("53", "986"));
    if amount_centavos > 0 {
        let amount = format!("{}.{:02}", amount_centavos / 100, amount_centavos % 100);
        payload.push_str(&tlv("54", &amount));
    }
    payload.push_str(&tlv("58", "BR"));
    payload.push_str(&tlv("59", &truncate(merchant_name, 25)));
    payload.push_str(&tlv("60", &truncate(city, 15)));
    payload.push_str(&tlv("62", &tlv("05", &txid)));
    with_crc(&payload)
}

/// One field: id, 2-digit character count, value.
#[cfg(any(test, feature = "sandbox"))]
fn tlv(id: &str, value: &str) -> String {
    format!("{id}{:02}{value}", value.chars().count())
}

#[cfg(any(test, feature = "sandbox"))]
fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// The number written by the two ASCII digits at `pos`, if both are digits.
fn two_digits(chars: &[char], pos: usize) -> Option<u32> {
    let a = chars.get(pos)?.to_digit(10)?;
    let b = chars.get(pos + 1)?.to_digit(10)?;
    Some(a * 10 + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &str = "00020126580014br.gov.bcb.pix0136123e4567-e12b-12d1-a456-4266554400005204000053039865802BR5913Fulano de Tal6008BRASILIA62070503***63041D3D";

    #[test]
    fn known_example_is_valid() {
        assert_eq!(validate(KNOWN), Ok(()));
        assert_eq!(crc16(&KNOWN[..KNOWN.len() - 4]), 0x1D3D);
        assert_eq!(validate(&format!("  {KNOWN}\n")), Ok(()));
    }

    #[test]
    fn lower_case_crc_accepted() {
        let lower = KNOWN.replace("63041D3D", "63041d3d");
        assert_eq!(validate(&lower), Ok(()));
    }

    #[test]
    fn tampered_content_fails_crc() {
        let tampered = KNOWN.replace("Fulano de Tal", "Fulano de Tul");
        assert_eq!(
            validate(&tampered),
            Err(PixError::CrcMismatch {
                expected: format!("{:04X}", crc16(&tampered[..tampered.len() - 4])),
                found: "1D3D".into()
            })
        );
        let wrong_crc = KNOWN.replace("63041D3D", "63041D3E");
        assert!(matches!(
            validate(&wrong_crc),
            Err(PixError::CrcMismatch { .. })
        ));
        let not_hex = KNOWN.replace("63041D3D", "63041D3G");
        assert_eq!(
            validate(&not_hex),
            Err(PixError::CrcMismatch {
                expected: "1D3D".into(),
                found: "1D3G".into()
            })
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(validate(""), Err(PixError::Empty));
        assert_eq!(validate("   "), Err(PixError::Empty));
        // Truncated: the last field runs past the end.
        assert_eq!(
            validate(&KNOWN[..KNOWN.len() - 1]),
            Err(PixError::Malformed {
                position: KNOWN.len() - 8
            })
        );
        assert_eq!(
            validate("0002010"),
            Err(PixError::Malformed { position: 6 })
        );
        assert_eq!(
            validate("ab02010"),
            Err(PixError::Malformed { position: 0 })
        );
        // A field ending in the middle of the id of the next one.
        assert_eq!(
            validate("000201X"),
            Err(PixError::Malformed { position: 6 })
        );
        // No CRC field at all.
        assert_eq!(validate("000201"), Err(PixError::MissingCrc));
        let without = &KNOWN[..KNOWN.len() - 8];
        assert_eq!(validate(without), Err(PixError::MissingCrc));
        // A CRC field of the wrong length.
        assert_eq!(validate("0002016303ABC"), Err(PixError::MissingCrc));
        // A CRC field that is not the last one.
        let crc_first = format!("63041D3D{}", &KNOWN[..KNOWN.len() - 8]);
        assert_eq!(
            validate(&crc_first),
            Err(PixError::Malformed { position: 0 })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            PixError::CrcMismatch {
                expected: "1D3D".into(),
                found: "1D3E".into()
            }
            .to_string(),
            "the PIX code's CRC is 1D3E but its content gives 1D3D (scraped wrong?)"
        );
        assert_eq!(PixError::Empty.to_string(), "the PIX code is empty");
    }

    #[test]
    fn with_crc_makes_valid_codes() {
        let payload = &KNOWN[..KNOWN.len() - 8];
        assert_eq!(with_crc(payload), KNOWN);
        assert_eq!(validate(&with_crc("000201")), Ok(()));
    }

    #[test]
    fn build_reproduces_known_example() {
        let built = build(
            "123e4567-e12b-12d1-a456-426655440000",
            "Fulano de Tal",
            "BRASILIA",
            0,
            "***",
        );
        assert_eq!(built, KNOWN);
        assert_eq!(
            build(
                "123e4567-e12b-12d1-a456-426655440000",
                "Fulano de Tal",
                "BRASILIA",
                0,
                ""
            ),
            KNOWN
        );
    }

    #[test]
    fn build_with_amount_and_long_values() {
        let code = build(
            "fulano@example.com",
            "Nome Muito Comprido de Empresa Ltda",
            "São José dos Campos do Sul",
            9990,
            "FAT202501",
        );
        assert_eq!(validate(&code), Ok(()));
        assert!(code.contains("540599.90"), "{code}");
        assert!(code.contains("5925Nome Muito Comprido de Em60"), "{code}");
        assert!(code.contains("6015São José dos Ca62"), "{code}");
        assert!(code.contains("62130509FAT202501"), "{code}");

        let code = build(&"k".repeat(120), "N", "C", 5, &"t".repeat(40));
        assert_eq!(validate(&code), Ok(()));
        assert!(code.contains("54040.05"), "{code}");
        let code = build("key", "N", "C", -100, "x");
        assert_eq!(validate(&code), Ok(()));
        assert!(!code.contains("5405"), "{code}");
    }
}
