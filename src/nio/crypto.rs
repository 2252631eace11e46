//! The Nio bootstrap cipher: base64 of `IV (16 bytes) || AES-256-CBC ciphertext (PKCS7)` with
//! key = SHA-256 of a passphrase. The sandbox seals with it; the client opens with it; the
//! store keeps the session sealed with it so that no token is kept in clear text.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// Why a sealed text did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("it is not base64")]
    NotBase64,
    #[error("it is too short to hold an IV and a block")]
    TooShort,
    #[error("it does not decrypt with this passphrase (bad padding)")]
    WrongKey,
}

/// The AES key for a passphrase.
pub fn key(passphrase: &str) -> [u8; 32] {
    Sha256::digest(passphrase.as_bytes()).into()
}

/// Encrypts `plaintext` with a random IV.
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> String {
    let mut iv = [0u8; 16];
    getrandom::fill(&mut iv).expect("the OS random source works");
    let ct = Enc::new(key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    STANDARD.encode(out)
}

/// Decrypts what [`seal`] (or the Nio site) produced.
pub fn open(key: &[u8; 32], sealed: &str) -> Result<Vec<u8>, OpenError> {
    let cleaned: String = sealed.chars().filter(|c| !c.is_whitespace()).collect();
    let cleaned = cleaned.trim_matches('"');
    let raw = STANDARD.decode(cleaned).map_err(|_| OpenError::NotBase64)?;
    if raw.len() < 32 || (raw.len() - 16) % 16 != 0 {
        return Err(OpenError::TooShort);
    }
    let (iv, ct) = raw.split_at(16);
    let iv: [u8; 16] = iv.try_into().map_err(|_| OpenError::TooShort)?;
    Dec::new(key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .map_err(|_| OpenError::WrongKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let k = key("segredo");
        let sealed = seal(&k, br#"{"token":"t"}"#);
        assert_eq!(open(&k, &sealed).unwrap(), br#"{"token":"t"}"#);
        // A wrong key almost always fails the padding check; when it does not, the bytes differ.
        let other = open(&key("outro"), &sealed);
        assert!(other.as_deref() != Ok(&br#"{"token":"t"}"#[..]));
        assert_eq!(open(&k, "not base64!"), Err(OpenError::NotBase64));
        assert_eq!(open(&k, "AAAA"), Err(OpenError::TooShort));
    }
}
