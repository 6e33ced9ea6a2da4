//! Importing key material (BYOK, spec §5): wrapping key pairs, import tokens, unwrapping.
//!
//! `GetParametersForImport` makes a fresh RSA key pair (aws-lc-rs). The private key is never
//! stored: it travels inside the import token, sealed under the key store's root key
//! ([`KeyStore::seal_secret`]) together with the key id, the wrapping algorithm and the expiry,
//! so the server keeps no per-token state and a token survives a restart. Token:
//! `0x01 ‖ sealed(label = "import-token-v1" ‖ key id, kid (16) ‖ algorithm (1) ‖ valid-to
//! (8, big-endian Unix seconds) ‖ PKCS#8 private key)`. Opening fails for a tampered token, or
//! one issued for another key (its key id is part of the seal's AAD) →
//! `InvalidImportTokenException`; past its valid-to → `ExpiredImportTokenException`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use envelope_keystore::{KeySpec, KeyStore};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result, Subject};
use crate::protocol::{WrappingAlgorithm, WrappingKeySpec};

/// How long a public key and import token pair is valid (24 hours).
pub const TOKEN_LIFETIME: i64 = 24 * 3600;
/// Length of imported symmetric key material.
pub const MATERIAL_LEN: usize = 32;

const TOKEN_VERSION: u8 = 1;
const HEADER: usize = 16 + 1 + 8;

/// What GetParametersForImport returns.
pub(crate) struct Parameters {
    /// DER SubjectPublicKeyInfo of the wrapping key.
    pub public_key: Vec<u8>,
    /// The opaque import token.
    pub token: Vec<u8>,
    /// Expiry of both, Unix seconds.
    pub valid_to: i64,
}

/// A fresh wrapping key pair and its token for key `kid` at time `now`.
pub(crate) fn parameters(
    store: &KeyStore,
    kid: &[u8; 16],
    algorithm: WrappingAlgorithm,
    spec: WrappingKeySpec,
    now: i64,
) -> Result<Parameters> {
    let size = match spec {
        WrappingKeySpec::Rsa2048 => KeySize::Rsa2048,
        WrappingKeySpec::Rsa3072 => KeySize::Rsa3072,
        WrappingKeySpec::Rsa4096 => KeySize::Rsa4096,
    };
    let private = PrivateDecryptingKey::generate(size).map_err(|_| internal("RSA key generation failed"))?;
    let public_key =
        private.public_key().as_der().map_err(|_| internal("public key encoding failed"))?.as_ref().to_vec();
    let pkcs8 = private.as_der().map_err(|_| internal("private key encoding failed"))?;
    let valid_to = now.saturating_add(TOKEN_LIFETIME);
    let mut plain = Zeroizing::new(Vec::with_capacity(HEADER + pkcs8.as_ref().len()));
    plain.extend_from_slice(kid);
    plain.push(alg_byte(algorithm));
    plain.extend_from_slice(&valid_to.to_be_bytes());
    plain.extend_from_slice(pkcs8.as_ref());
    let sealed = store.seal_secret(&label(kid), &plain).map_err(|e| KmsError::from_store(e, Subject::Internal))?;
    let mut token = Vec::with_capacity(1 + sealed.len());
    token.push(TOKEN_VERSION);
    token.extend_from_slice(&sealed);
    Ok(Parameters { public_key, token, valid_to })
}

/// Opens `token` for key `kid` (of `spec`) at time `now` and unwraps `encrypted` with it: the
/// key material (exactly [`MATERIAL_LEN`] bytes for a symmetric key).
pub(crate) fn unwrap(
    store: &KeyStore,
    kid: &[u8; 16],
    spec: KeySpec,
    token: &[u8],
    encrypted: &[u8],
    now: i64,
) -> Result<Zeroizing<Vec<u8>>> {
    let invalid = || KmsError::InvalidImportToken("The import token is invalid or was issued for another key.".into());
    let (&version, sealed) = token.split_first().ok_or_else(invalid)?;
    if version != TOKEN_VERSION {
        return Err(invalid());
    }
    let plain = store.open_secret(&label(kid), sealed).map_err(|_| invalid())?;
    if plain.len() <= HEADER || plain[..16] != kid[..] {
        return Err(invalid());
    }
    let algorithm = alg_from_byte(plain[16]).ok_or_else(invalid)?;
    let mut valid_to = [0u8; 8];
    valid_to.copy_from_slice(&plain[17..HEADER]);
    if now > i64::from_be_bytes(valid_to) {
        return Err(KmsError::ExpiredImportToken(
            "The import token has expired; call GetParametersForImport again.".into(),
        ));
    }
    let private = PrivateDecryptingKey::from_pkcs8(&plain[HEADER..]).map_err(|_| invalid())?;
    let private = OaepPrivateDecryptingKey::new(private).map_err(|_| invalid())?;
    let material = match algorithm {
        WrappingAlgorithm::OaepSha1 => oaep(&private, &OAEP_SHA1_MGF1SHA1, encrypted)?,
        WrappingAlgorithm::OaepSha256 => oaep(&private, &OAEP_SHA256_MGF1SHA256, encrypted)?,
        WrappingAlgorithm::AesKeyWrapSha1 => hybrid(&private, &OAEP_SHA1_MGF1SHA1, encrypted)?,
        WrappingAlgorithm::AesKeyWrapSha256 => hybrid(&private, &OAEP_SHA256_MGF1SHA256, encrypted)?,
    };
    // HMAC material and key pairs are checked by the key store against the key's spec.
    if spec == KeySpec::SymmetricDefault && material.len() != MATERIAL_LEN {
        return Err(KmsError::IncorrectKeyMaterial(format!(
            "The key material must be {MATERIAL_LEN} bytes for a SYMMETRIC_DEFAULT key."
        )));
    }
    Ok(material)
}

fn oaep(private: &OaepPrivateDecryptingKey, alg: &'static OaepAlgorithm, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; private.min_output_size()]);
    let len = private.decrypt(alg, ct, &mut out[..], None).map_err(|_| KmsError::InvalidCiphertext)?.len();
    out.truncate(len);
    Ok(out)
}

/// RSA-OAEP of an AES-256 key (the first modulus-size bytes), then RFC 5649 AES key wrap with
/// padding of the material (the rest).
fn hybrid(private: &OaepPrivateDecryptingKey, alg: &'static OaepAlgorithm, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let n = private.key_size_bytes();
    if ct.len() <= n {
        return Err(KmsError::InvalidCiphertext);
    }
    let (rsa_part, wrapped) = ct.split_at(n);
    let aes = oaep(private, alg, rsa_part)?;
    if aes.len() != 32 {
        return Err(KmsError::InvalidCiphertext);
    }
    let kek = AesKek::new(&AES_256, &aes).map_err(|_| KmsError::InvalidCiphertext)?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = kek.unwrap_with_padding(wrapped, &mut out[..]).map_err(|_| KmsError::InvalidCiphertext)?.len();
    out.truncate(len);
    Ok(out)
}

fn label(kid: &[u8; 16]) -> Vec<u8> {
    let mut l = b"import-token-v1".to_vec();
    l.extend_from_slice(kid);
    l
}

fn alg_byte(a: WrappingAlgorithm) -> u8 {
    match a {
        WrappingAlgorithm::OaepSha1 => 1,
        WrappingAlgorithm::OaepSha256 => 2,
        WrappingAlgorithm::AesKeyWrapSha1 => 3,
        WrappingAlgorithm::AesKeyWrapSha256 => 4,
    }
}

fn alg_from_byte(b: u8) -> Option<WrappingAlgorithm> {
    Some(match b {
        1 => WrappingAlgorithm::OaepSha1,
        2 => WrappingAlgorithm::OaepSha256,
        3 => WrappingAlgorithm::AesKeyWrapSha1,
        4 => WrappingAlgorithm::AesKeyWrapSha256,
        _ => return None,
    })
}

fn internal(m: &str) -> KmsError {
    KmsError::Internal(m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::key_wrap::KeyWrapPadded;
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
    use proptest::prelude::*;

    fn store() -> (tempfile::TempDir, KeyStore) {
        let d = tempfile::tempdir().unwrap();
        let s = KeyStore::open(&d.path().join("data")).unwrap();
        (d, s)
    }

    fn wrap(public: &[u8], a: WrappingAlgorithm, material: &[u8]) -> Vec<u8> {
        let pk = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public).unwrap()).unwrap();
        let alg = match a {
            WrappingAlgorithm::OaepSha1 | WrappingAlgorithm::AesKeyWrapSha1 => &OAEP_SHA1_MGF1SHA1,
            _ => &OAEP_SHA256_MGF1SHA256,
        };
        let rsa = |pt: &[u8]| {
            let mut out = vec![0u8; pk.ciphertext_size()];
            pk.encrypt(alg, pt, &mut out, None).unwrap().to_vec()
        };
        match a {
            WrappingAlgorithm::OaepSha1 | WrappingAlgorithm::OaepSha256 => rsa(material),
            _ => {
                let aes = [5u8; 32];
                let mut w = vec![0u8; material.len() + 16];
                let w = AesKek::new(&AES_256, &aes).unwrap().wrap_with_padding(material, &mut w).unwrap().to_vec();
                [rsa(&aes), w].concat()
            }
        }
    }

    #[test]
    fn every_algorithm_round_trips_and_tokens_are_bound() {
        let (_d, s) = store();
        let kid = [1u8; 16];
        for a in [
            WrappingAlgorithm::OaepSha1,
            WrappingAlgorithm::OaepSha256,
            WrappingAlgorithm::AesKeyWrapSha1,
            WrappingAlgorithm::AesKeyWrapSha256,
        ] {
            let p = parameters(&s, &kid, a, WrappingKeySpec::Rsa2048, 1000).unwrap();
            assert!(p.token.len() <= crate::protocol::MAX_CIPHERTEXT);
            assert_eq!(p.valid_to, 1000 + TOKEN_LIFETIME);
            let enc = wrap(&p.public_key, a, &[9u8; 32]);
            assert_eq!(&unwrap(&s, &kid, KeySpec::SymmetricDefault, &p.token, &enc, 1000).unwrap()[..], &[9u8; 32]);
            assert_eq!(
                unwrap(&s, &kid, KeySpec::SymmetricDefault, &p.token, &enc, p.valid_to + 1).unwrap_err().aws().0,
                "ExpiredImportTokenException"
            );
            assert_eq!(
                unwrap(&s, &[2u8; 16], KeySpec::SymmetricDefault, &p.token, &enc, 1000).unwrap_err().aws().0,
                "InvalidImportTokenException"
            );
            let short = wrap(&p.public_key, a, &[9u8; 24]);
            assert_eq!(
                unwrap(&s, &kid, KeySpec::SymmetricDefault, &p.token, &short, 1000).unwrap_err().aws().0,
                "IncorrectKeyMaterialException"
            );
        }
        let p = parameters(&s, &kid, WrappingAlgorithm::OaepSha256, WrappingKeySpec::Rsa4096, 0).unwrap();
        assert!(p.token.len() <= crate::protocol::MAX_CIPHERTEXT, "{}", p.token.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(token in proptest::collection::vec(any::<u8>(), 0..200), enc in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (_d, s) = store();
            prop_assert!(unwrap(&s, &[0u8; 16], KeySpec::SymmetricDefault, &token, &enc, 0).is_err());
        }
    }
}
