//! Encryption of stored secrets (portal passwords) with Fernet, so that the store never holds
//! them in clear text. Tokens are interchangeable with Python's `cryptography.fernet`: a secret
//! encrypted by the old Python jobs decrypts here, and the other way round.

use thiserror::Error;

/// Why a key or a stored secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretBoxError {
    /// The key is not 32 bytes of url-safe base64.
    #[error(
        "the Fernet key is not valid (expected 32 bytes in url-safe base64, as `Fernet.generate_key()` makes)"
    )]
    BadKey,
    /// The token is malformed, was tampered with, or was made with another key.
    #[error(
        "the stored secret does not decrypt with this Fernet key (was it encrypted with another `CRM_JOBS_FERNET_KEY`?)"
    )]
    WrongKey,
    /// The token is authentic but its plaintext is not UTF-8.
    #[error("the decrypted secret is not UTF-8 text")]
    NotUtf8,
}

/// Encrypts and decrypts secrets with one Fernet key.
///
/// Tokens carry no time-to-live here: a stored password stays valid until it is replaced.
pub struct SecretBox {
    fernet: fernet::Fernet,
}

impl SecretBox {
    /// Makes a box from a Fernet key (url-safe base64 of 32 bytes, as `Fernet.generate_key()`
    /// and [`generate_key`] make). Surrounding whitespace, such as the newline of a key file, is
    /// ignored.
    pub fn new(key: &str) -> Result<SecretBox, SecretBoxError> {
        fernet::Fernet::new(key.trim())
            .map(|fernet| SecretBox { fernet })
            .ok_or(SecretBoxError::BadKey)
    }

    /// Encrypts `plaintext` into a Fernet token (url-safe base64 text, safe to store as is).
    /// Each call uses a fresh random IV, so the same secret gives a different token each time.
    pub fn encrypt(&self, plaintext: &str) -> String {
        self.fernet.encrypt(plaintext.as_bytes())
    }

    /// Decrypts a Fernet token made with this key, by this module or by Python.
    pub fn decrypt(&self, token: &str) -> Result<String, SecretBoxError> {
        let bytes = self
            .fernet
            .decrypt(token.trim())
            .map_err(|_| SecretBoxError::WrongKey)?;
        String::from_utf8(bytes).map_err(|_| SecretBoxError::NotUtf8)
    }
}

/// Hides the key material from `{:?}`.
impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Generates a new random Fernet key, in the same form as Python's `Fernet.generate_key()`.
pub fn generate_key() -> String {
    fernet::Fernet::generate_key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    // The official spec vectors, kept in the repo (tests/fixtures/fernet/SOURCE.txt says where
    // they come from) so that the tests need nothing outside the checkout.
    const GENERATE: &str = include_str!("../tests/fixtures/fernet/generate.json");
    const VERIFY: &str = include_str!("../tests/fixtures/fernet/verify.json");
    const INVALID: &str = include_str!("../tests/fixtures/fernet/invalid.json");

    #[derive(Deserialize)]
    struct Vector {
        #[serde(default)]
        desc: String,
        token: String,
        secret: String,
        #[serde(default)]
        src: Option<String>,
    }

    fn vectors(json: &str) -> Vec<Vector> {
        let vectors: Vec<Vector> = serde_json::from_str(json).expect("fixture is valid JSON");
        assert!(!vectors.is_empty());
        vectors
    }

    #[test]
    fn generate_vectors_decrypt_to_their_source() {
        // The `fernet` crate does not expose encryption with a chosen IV and time, so the
        // generate vectors can only be checked in the decrypt direction.
        for v in vectors(GENERATE) {
            let secret_box = SecretBox::new(&v.secret).unwrap();
            assert_eq!(secret_box.decrypt(&v.token).unwrap(), v.src.unwrap());
        }
    }

    #[test]
    fn verify_vectors_decrypt_to_their_source() {
        // Decrypted without a time-to-live, as stored secrets are: the `ttl_sec` of the vectors
        // would need the crate's `fernet_danger_timestamps` feature.
        for v in vectors(VERIFY) {
            let secret_box = SecretBox::new(&v.secret).unwrap();
            assert_eq!(secret_box.decrypt(&v.token).unwrap(), v.src.unwrap());
        }
    }

    #[test]
    fn invalid_vectors_fail() {
        // These two are invalid only at the vector's own `now` with its `ttl_sec`; stored
        // secrets are decrypted with no time-to-live at today's time, where they are authentic.
        const TIME_DEPENDENT: [&str; 2] =
            ["far-future TS (unacceptable clock skew)", "expired TTL"];
        let mut checked = 0;
        for v in vectors(INVALID) {
            if TIME_DEPENDENT.contains(&v.desc.as_str()) {
                continue;
            }
            let secret_box = SecretBox::new(&v.secret).unwrap();
            assert_eq!(
                secret_box.decrypt(&v.token),
                Err(SecretBoxError::WrongKey),
                "{}",
                v.desc
            );
            checked += 1;
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn round_trips_with_a_generated_key() {
        let key = generate_key();
        assert_eq!(key.len(), 44);
        let secret_box = SecretBox::new(&format!("{key}\n")).unwrap();
        for plaintext in ["", "s3nh@ Forte!", "pão de açúcar ✓"] {
            let token = secret_box.encrypt(plaintext);
            assert!(token.starts_with("gAAAAA"), "{token}");
            assert_eq!(secret_box.decrypt(&token).unwrap(), plaintext);
        }
        assert_ne!(secret_box.encrypt("x"), secret_box.encrypt("x"));
    }

    #[test]
    fn another_key_is_wrong_key() {
        let token = SecretBox::new(&generate_key()).unwrap().encrypt("senha");
        let other = SecretBox::new(&generate_key()).unwrap();
        assert_eq!(other.decrypt(&token), Err(SecretBoxError::WrongKey));
        assert_eq!(
            SecretBoxError::WrongKey.to_string(),
            "the stored secret does not decrypt with this Fernet key (was it encrypted with another `CRM_JOBS_FERNET_KEY`?)"
        );
    }

    #[test]
    fn bad_keys_are_rejected() {
        for key in [
            "",
            "not a key",
            "c2hvcnQ=",
            "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4",
        ] {
            assert_eq!(
                SecretBox::new(key).unwrap_err(),
                SecretBoxError::BadKey,
                "{key}"
            );
        }
        assert_eq!(
            SecretBoxError::BadKey.to_string(),
            "the Fernet key is not valid (expected 32 bytes in url-safe base64, as `Fernet.generate_key()` makes)"
        );
    }

    #[test]
    fn non_utf8_plaintext_is_reported() {
        let key = generate_key();
        let token = fernet::Fernet::new(&key).unwrap().encrypt(&[0xff, 0xfe]);
        let secret_box = SecretBox::new(&key).unwrap();
        assert_eq!(secret_box.decrypt(&token), Err(SecretBoxError::NotUtf8));
        assert_eq!(
            SecretBoxError::NotUtf8.to_string(),
            "the decrypted secret is not UTF-8 text"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let secret_box = SecretBox::new(&generate_key()).unwrap();
        assert_eq!(format!("{secret_box:?}"), "SecretBox(..)");
    }
}
