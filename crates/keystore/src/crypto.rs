//! Thin wrappers over aws-lc-rs: AES-256-GCM with random nonces, HMAC keys, signing key pairs,
//! RSA-OAEP decryption keys, ECDH key agreement keys, secure random bytes, SHA-256.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::{EncryptionAlgorithm, KeySpec, MacAlgorithm, SigningAlgorithm};

/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = aws_lc_rs::aead::NONCE_LEN;
/// Length of key material (AES-256).
pub const KEY_LEN: usize = 32;

/// An AES-256-GCM key. The underlying AWS-LC object cleanses its memory when dropped.
pub struct AeadKey(LessSafeKey);

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    /// Builds a key from 32 bytes of material.
    pub fn new(material: &[u8]) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, material).map_err(|_| Error::Crypto)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Encrypts `plaintext` with a fresh random nonce; returns `nonce ‖ ciphertext ‖ tag`,
    /// appended to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.seal_with_nonce(nonce, aad, plaintext, out)
    }

    /// Encrypts `plaintext` under the caller's `nonce` (which must never repeat for this key);
    /// appends `nonce ‖ ciphertext ‖ tag` to `out`. Deterministic: the pure half of
    /// [`AeadKey::seal_into`].
    pub fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.reserve(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[start..])
            .map_err(|_| Error::Crypto)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens `nonce ‖ ciphertext ‖ tag`. Fails on any tampering or AAD mismatch.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::InvalidCiphertext("too short"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::InvalidCiphertext("bad nonce"))?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let len =
            self.0.open_in_place(nonce, Aad::from(aad), &mut buf[..]).map_err(|_| Error::AuthenticationFailed)?.len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// An HMAC key (the material of an HMAC key spec). The underlying AWS-LC object cleanses its
/// memory when dropped.
pub struct MacKey {
    key: aws_lc_rs::hmac::Key,
    algorithm: MacAlgorithm,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({}, ..)", self.algorithm)
    }
}

impl MacKey {
    /// An HMAC key for `algorithm` from `material`.
    pub fn new(algorithm: MacAlgorithm, material: &[u8]) -> Self {
        let alg = match algorithm {
            MacAlgorithm::HmacSha224 => aws_lc_rs::hmac::HMAC_SHA224,
            MacAlgorithm::HmacSha256 => aws_lc_rs::hmac::HMAC_SHA256,
            MacAlgorithm::HmacSha384 => aws_lc_rs::hmac::HMAC_SHA384,
            MacAlgorithm::HmacSha512 => aws_lc_rs::hmac::HMAC_SHA512,
        };
        Self { key: aws_lc_rs::hmac::Key::new(alg, material), algorithm }
    }

    /// The algorithm this key computes.
    pub fn algorithm(&self) -> MacAlgorithm {
        self.algorithm
    }

    /// The HMAC of `message` (RFC 2104).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.key, message).as_ref().to_vec()
    }

    /// Whether `mac` is the HMAC of `message`, compared in constant time.
    pub fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
        aws_lc_rs::hmac::verify(&self.key, message, mac).is_ok()
    }
}

/// A signing key pair (the material of an ECC_NIST_* or RSA_* key spec), from its PKCS#8
/// document.
pub struct SigningKey {
    pair: Pair,
    spec: KeySpec,
}

enum Pair {
    Ecdsa(aws_lc_rs::signature::EcdsaKeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, ..)", self.spec)
    }
}

/// The ECDSA signing and verification algorithms of an ECC key spec.
fn ecdsa(
    spec: KeySpec,
) -> Option<(
    &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
    &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm,
)> {
    use aws_lc_rs::signature as s;
    match spec {
        KeySpec::EccNistP256 => Some((&s::ECDSA_P256_SHA256_ASN1_SIGNING, &s::ECDSA_P256_SHA256_ASN1)),
        KeySpec::EccNistP384 => Some((&s::ECDSA_P384_SHA384_ASN1_SIGNING, &s::ECDSA_P384_SHA384_ASN1)),
        KeySpec::EccNistP521 => Some((&s::ECDSA_P521_SHA512_ASN1_SIGNING, &s::ECDSA_P521_SHA512_ASN1)),
        KeySpec::EccSecgP256k1 => Some((&s::ECDSA_P256K1_SHA256_ASN1_SIGNING, &s::ECDSA_P256K1_SHA256_ASN1)),
        _ => None,
    }
}

/// The RSA key size of an RSA key spec, in bits.
fn rsa_bits(spec: KeySpec) -> Option<(aws_lc_rs::rsa::KeySize, usize)> {
    use aws_lc_rs::rsa::KeySize;
    match spec {
        KeySpec::Rsa2048 => Some((KeySize::Rsa2048, 2048)),
        KeySpec::Rsa3072 => Some((KeySize::Rsa3072, 3072)),
        KeySpec::Rsa4096 => Some((KeySize::Rsa4096, 4096)),
        _ => None,
    }
}

/// The RSA padding (signing) and verification parameters of an RSA signing algorithm.
fn rsa_alg(
    a: SigningAlgorithm,
) -> Option<(&'static dyn aws_lc_rs::signature::RsaEncoding, &'static aws_lc_rs::signature::RsaParameters)> {
    use SigningAlgorithm as S;
    use aws_lc_rs::signature as s;
    match a {
        S::RsassaPssSha256 => Some((&s::RSA_PSS_SHA256, &s::RSA_PSS_2048_8192_SHA256)),
        S::RsassaPssSha384 => Some((&s::RSA_PSS_SHA384, &s::RSA_PSS_2048_8192_SHA384)),
        S::RsassaPssSha512 => Some((&s::RSA_PSS_SHA512, &s::RSA_PSS_2048_8192_SHA512)),
        S::RsassaPkcs1V15Sha256 => Some((&s::RSA_PKCS1_SHA256, &s::RSA_PKCS1_2048_8192_SHA256)),
        S::RsassaPkcs1V15Sha384 => Some((&s::RSA_PKCS1_SHA384, &s::RSA_PKCS1_2048_8192_SHA384)),
        S::RsassaPkcs1V15Sha512 => Some((&s::RSA_PKCS1_SHA512, &s::RSA_PKCS1_2048_8192_SHA512)),
        _ => None,
    }
}

fn digest_alg(a: SigningAlgorithm) -> &'static aws_lc_rs::digest::Algorithm {
    match a.digest_len() {
        32 => &aws_lc_rs::digest::SHA256,
        48 => &aws_lc_rs::digest::SHA384,
        _ => &aws_lc_rs::digest::SHA512,
    }
}

/// What is signed: the message itself, or its digest (AWS's `MessageType` RAW / DIGEST).
#[derive(Debug, Clone, Copy)]
pub enum Signed<'a> {
    /// The message; it is hashed with the algorithm's digest.
    Raw(&'a [u8]),
    /// The digest of the message, as long as the algorithm's digest.
    Digest(&'a [u8]),
}

impl Signed<'_> {
    fn digest(&self, alg: SigningAlgorithm) -> Result<aws_lc_rs::digest::Digest> {
        match self {
            Signed::Raw(m) => Ok(aws_lc_rs::digest::digest(digest_alg(alg), m)),
            Signed::Digest(d) => aws_lc_rs::digest::Digest::import_less_safe(d, digest_alg(alg))
                .map_err(|_| Error::Invalid("the digest is not as long as the algorithm's".into())),
        }
    }
}

impl SigningKey {
    /// A fresh key pair of `spec`, as a PKCS#8 document (zeroized on drop).
    pub fn generate_pkcs8(spec: KeySpec) -> Result<Zeroizing<Vec<u8>>> {
        if let Some((signing, _)) = ecdsa(spec) {
            let doc =
                aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(signing, &aws_lc_rs::rand::SystemRandom::new())
                    .map_err(|_| Error::Crypto)?;
            return Ok(Zeroizing::new(doc.as_ref().to_vec()));
        }
        let (size, _) = rsa_bits(spec).ok_or(Error::Crypto)?;
        let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| Error::Crypto)?;
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
            aws_lc_rs::encoding::AsDer::as_der(&pair).map_err(|_| Error::Crypto)?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The key pair of a PKCS#8 document of `spec`.
    pub fn from_pkcs8(spec: KeySpec, pkcs8: &[u8]) -> Result<Self> {
        if let Some((signing, _)) = ecdsa(spec) {
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8).map_err(|_| Error::Crypto)?;
            return Ok(Self { pair: Pair::Ecdsa(pair), spec });
        }
        let (_, bits) = rsa_bits(spec).ok_or(Error::Crypto)?;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8).map_err(|_| Error::Crypto)?;
        if pair.public_modulus_len() * 8 != bits {
            return Err(Error::Crypto);
        }
        Ok(Self { pair: Pair::Rsa(pair), spec })
    }

    /// The key spec of the pair.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The public key as a DER SubjectPublicKeyInfo (X.509).
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let der = match &self.pair {
            Pair::Ecdsa(p) => p.public_key().as_der(),
            Pair::Rsa(p) => p.public_key().as_der(),
        }
        .map_err(|_| Error::Crypto)?;
        Ok(der.as_ref().to_vec())
    }

    fn check(&self, alg: SigningAlgorithm) -> Result<()> {
        if self.spec.signing_algorithms().contains(&alg) {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{alg} is not an algorithm of {} keys", self.spec)))
        }
    }

    /// A signature of `what` with `alg` (one of the spec's): ASN.1 DER for ECDSA, the modulus
    /// length for RSA. A digest of the wrong length is [`Error::Invalid`].
    pub fn sign(&self, alg: SigningAlgorithm, what: Signed<'_>) -> Result<Vec<u8>> {
        self.check(alg)?;
        let digest = what.digest(alg)?;
        match &self.pair {
            Pair::Ecdsa(p) => Ok(p.sign_digest(&digest).map_err(|_| Error::Crypto)?.as_ref().to_vec()),
            Pair::Rsa(p) => {
                let (padding, _) = rsa_alg(alg).ok_or(Error::Crypto)?;
                let mut sig = vec![0u8; p.public_modulus_len()];
                p.sign_digest(padding, &digest, &mut sig).map_err(|_| Error::Crypto)?;
                Ok(sig)
            }
        }
    }

    /// Whether `signature` is this key's `alg` signature of `what`.
    pub fn verify(&self, alg: SigningAlgorithm, what: Signed<'_>, signature: &[u8]) -> Result<bool> {
        use aws_lc_rs::signature::{KeyPair, UnparsedPublicKey};
        self.check(alg)?;
        let digest = what.digest(alg)?;
        Ok(match &self.pair {
            Pair::Ecdsa(p) => {
                let (_, verify) = ecdsa(self.spec).ok_or(Error::Crypto)?;
                UnparsedPublicKey::new(verify, p.public_key()).verify_digest(&digest, signature).is_ok()
            }
            Pair::Rsa(p) => {
                let (_, params) = rsa_alg(alg).ok_or(Error::Crypto)?;
                UnparsedPublicKey::new(params, p.public_key().as_ref()).verify_digest(&digest, signature).is_ok()
            }
        })
    }
}

/// An RSA encryption key pair (the material of an RSA_* key spec with usage `ENCRYPT_DECRYPT`),
/// from its PKCS#8 document: RSA-OAEP with MGF1 of the same hash and no label, as AWS KMS.
pub struct DecryptionKey {
    private: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
    public: aws_lc_rs::rsa::OaepPublicEncryptingKey,
    public_der: Vec<u8>,
    spec: KeySpec,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecryptionKey({}, ..)", self.spec)
    }
}

fn oaep(a: EncryptionAlgorithm) -> &'static aws_lc_rs::rsa::OaepAlgorithm {
    match a {
        EncryptionAlgorithm::RsaesOaepSha1 => &aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1,
        EncryptionAlgorithm::RsaesOaepSha256 => &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
    }
}

impl DecryptionKey {
    /// The key pair of a PKCS#8 document of RSA `spec` (the modulus must be the spec's size).
    pub fn from_pkcs8(spec: KeySpec, pkcs8: &[u8]) -> Result<Self> {
        let (_, bits) = rsa_bits(spec).ok_or(Error::Crypto)?;
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| Error::Crypto)?;
        if private.key_size_bits() != bits {
            return Err(Error::Crypto);
        }
        let public_der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
            aws_lc_rs::encoding::AsDer::as_der(&private.public_key()).map_err(|_| Error::Crypto)?;
        let public = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(private.public_key()).map_err(|_| Error::Crypto)?;
        let private = aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private).map_err(|_| Error::Crypto)?;
        Ok(Self { private, public, public_der: public_der.as_ref().to_vec(), spec })
    }

    /// The key spec of the pair.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The public key as a DER SubjectPublicKeyInfo (X.509).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_der.clone()
    }

    /// The RSA-OAEP encryption of `plaintext` (at most [`EncryptionAlgorithm::max_plaintext`]
    /// bytes, [`Error::Invalid`] otherwise): as long as the modulus.
    pub fn encrypt(&self, alg: EncryptionAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>> {
        let max = alg.max_plaintext(self.spec);
        if plaintext.len() > max {
            return Err(Error::Invalid(format!("{alg} encrypts at most {max} bytes under a {} key", self.spec)));
        }
        let mut out = vec![0u8; self.public.ciphertext_size()];
        let len = self.public.encrypt(oaep(alg), plaintext, &mut out, None).map_err(|_| Error::Crypto)?.len();
        out.truncate(len);
        Ok(out)
    }

    /// The plaintext of an RSA-OAEP `ciphertext` made with `alg` under this key pair;
    /// [`Error::InvalidCiphertext`] for anything else (wrong length, algorithm or key).
    pub fn decrypt(&self, alg: EncryptionAlgorithm, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if ciphertext.len() != self.private.key_size_bytes() {
            return Err(Error::InvalidCiphertext("not as long as the RSA modulus"));
        }
        let mut out = Zeroizing::new(vec![0u8; self.private.min_output_size()]);
        let len = self
            .private
            .decrypt(oaep(alg), ciphertext, &mut out[..], None)
            .map_err(|_| Error::InvalidCiphertext("RSA-OAEP decryption failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// An ECDH key (the material of an ECC_NIST_* key spec with usage `KEY_AGREEMENT`), from its
/// PKCS#8 document.
pub struct AgreementKey {
    private: aws_lc_rs::agreement::PrivateKey,
    public_der: Vec<u8>,
    spec: KeySpec,
}

impl std::fmt::Debug for AgreementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgreementKey({}, ..)", self.spec)
    }
}

fn ecdh(spec: KeySpec) -> Option<&'static aws_lc_rs::agreement::Algorithm> {
    use aws_lc_rs::agreement as a;
    match spec {
        KeySpec::EccNistP256 => Some(&a::ECDH_P256),
        KeySpec::EccNistP384 => Some(&a::ECDH_P384),
        KeySpec::EccNistP521 => Some(&a::ECDH_P521),
        _ => None,
    }
}

impl AgreementKey {
    /// The key of a PKCS#8 document of NIST curve `spec` (the curve must be the spec's).
    pub fn from_pkcs8(spec: KeySpec, pkcs8: &[u8]) -> Result<Self> {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let alg = ecdh(spec).ok_or(Error::Crypto)?;
        let private = aws_lc_rs::agreement::PrivateKey::from_private_key_der(alg, pkcs8).map_err(|_| Error::Crypto)?;
        let public: PublicKeyX509Der<'static> =
            private.compute_public_key().and_then(|p| p.as_der()).map_err(|_| Error::Crypto)?;
        Ok(Self { public_der: public.as_ref().to_vec(), private, spec })
    }

    /// The key spec of the key.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The public key as a DER SubjectPublicKeyInfo (X.509).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_der.clone()
    }

    /// The ECDH shared secret (the x-coordinate of the shared point, as long as the curve's
    /// field) with the peer whose public key is the DER SubjectPublicKeyInfo `peer`. A peer key
    /// that is not an SPKI, not on this key's curve or not a valid point is [`Error::Invalid`].
    pub fn derive(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        use aws_lc_rs::agreement::{ParsedPublicKey, ParsedPublicKeyFormat, UnparsedPublicKey};
        let invalid =
            || Error::Invalid(format!("the public key is not a DER SubjectPublicKeyInfo of a {} key", self.spec));
        let parsed =
            ParsedPublicKey::try_from(UnparsedPublicKey::new(self.private.algorithm(), peer)).map_err(|_| invalid())?;
        if parsed.format() != ParsedPublicKeyFormat::X509 {
            return Err(invalid());
        }
        aws_lc_rs::agreement::agree(&self.private, parsed, invalid(), |secret| Ok(Zeroizing::new(secret.to_vec())))
    }
}

/// Fills `buf` from the system's secure random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| Error::Crypto)
}

/// Fresh random key material of `len` bytes, zeroized on drop.
pub fn random_material(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut k = Zeroizing::new(vec![0u8; len]);
    fill_random(&mut k[..])?;
    Ok(k)
}

/// Fresh random key material, zeroized on drop.
pub fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(&mut k[..])?;
    Ok(k)
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = AeadKey::new(&[7u8; 32]).unwrap();
        let mut sealed = Vec::new();
        k.seal_into(b"aad", b"hello", &mut sealed).unwrap();
        assert_eq!(&k.open(b"aad", &sealed).unwrap()[..], b"hello");
        assert!(k.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open(b"aad", &bad).is_err());
        assert!(k.open(b"aad", &sealed[..10]).is_err());
    }

    #[test]
    fn hmac_matches_rfc_4231_and_verifies_in_constant_time() {
        // RFC 4231 test case 2 (key "Jefe").
        let msg = b"what do ya want for nothing?";
        let cases = [
            (MacAlgorithm::HmacSha224, "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44"),
            (MacAlgorithm::HmacSha256, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (
                MacAlgorithm::HmacSha384,
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                MacAlgorithm::HmacSha512,
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
        ];
        for (alg, want) in cases {
            let k = MacKey::new(alg, b"Jefe");
            assert_eq!(k.algorithm(), alg);
            let mac = k.sign(msg);
            assert_eq!(hex::encode(&mac), want, "{alg}");
            assert!(k.verify(msg, &mac));
            let mut bad = mac.clone();
            bad[0] ^= 1;
            assert!(!k.verify(msg, &bad));
            assert!(!k.verify(msg, &mac[..mac.len() - 1]));
            assert!(!k.verify(b"other", &mac));
        }
    }

    #[test]
    fn signing_keys_sign_raw_and_digest_messages_and_verify() {
        for spec in
            [KeySpec::EccNistP256, KeySpec::EccNistP384, KeySpec::EccNistP521, KeySpec::EccSecgP256k1, KeySpec::Rsa2048]
        {
            let doc = SigningKey::generate_pkcs8(spec).unwrap();
            let k = SigningKey::from_pkcs8(spec, &doc).unwrap();
            assert_eq!(k.spec(), spec);
            let der = k.public_key_der().unwrap();
            assert_eq!(der[0], 0x30, "a DER SEQUENCE");
            for &alg in spec.signing_algorithms() {
                let sig = k.sign(alg, Signed::Raw(b"message")).unwrap();
                assert!(k.verify(alg, Signed::Raw(b"message"), &sig).unwrap(), "{alg}");
                assert!(!k.verify(alg, Signed::Raw(b"messagf"), &sig).unwrap());
                let d = aws_lc_rs::digest::digest(digest_alg(alg), b"message");
                assert!(k.verify(alg, Signed::Digest(d.as_ref()), &sig).unwrap(), "RAW signs the digest");
                let sig2 = k.sign(alg, Signed::Digest(d.as_ref())).unwrap();
                assert!(k.verify(alg, Signed::Raw(b"message"), &sig2).unwrap());
                assert!(k.sign(alg, Signed::Digest(&[0u8; 20])).is_err());
            }
            let foreign = SigningAlgorithm::ALL.into_iter().find(|a| !spec.signing_algorithms().contains(a)).unwrap();
            assert!(k.sign(foreign, Signed::Raw(b"m")).is_err());
            assert!(SigningKey::from_pkcs8(spec, &doc[..doc.len() - 1]).is_err());
        }
        let rsa = SigningKey::generate_pkcs8(KeySpec::Rsa2048).unwrap();
        assert!(SigningKey::from_pkcs8(KeySpec::Rsa3072, &rsa).is_err(), "the size must be the spec's");
    }

    #[test]
    fn rsa_oaep_round_trips_within_aws_limits() {
        for spec in [KeySpec::Rsa2048, KeySpec::Rsa3072] {
            let doc = SigningKey::generate_pkcs8(spec).unwrap();
            let k = DecryptionKey::from_pkcs8(spec, &doc).unwrap();
            assert_eq!(k.spec(), spec);
            assert_eq!(k.public_key_der(), SigningKey::from_pkcs8(spec, &doc).unwrap().public_key_der().unwrap());
            for alg in EncryptionAlgorithm::ALL {
                let max = alg.max_plaintext(spec);
                let p = vec![0xa5u8; max];
                let c = k.encrypt(alg, &p).unwrap();
                assert_eq!(c.len(), spec.rsa_modulus_len().unwrap());
                assert_eq!(&k.decrypt(alg, &c).unwrap()[..], &p[..], "{spec} {alg}");
                assert_ne!(k.encrypt(alg, &p).unwrap(), c, "OAEP is randomized");
                assert!(matches!(k.encrypt(alg, &vec![0u8; max + 1]), Err(Error::Invalid(_))));
                let other = EncryptionAlgorithm::ALL.into_iter().find(|a| *a != alg).unwrap();
                assert!(matches!(k.decrypt(other, &c), Err(Error::InvalidCiphertext(_))));
                let mut bad = c.clone();
                bad[10] ^= 1;
                assert!(matches!(k.decrypt(alg, &bad), Err(Error::InvalidCiphertext(_))));
                assert!(matches!(k.decrypt(alg, &c[1..]), Err(Error::InvalidCiphertext(_))));
            }
        }
        let doc = SigningKey::generate_pkcs8(KeySpec::Rsa2048).unwrap();
        assert!(DecryptionKey::from_pkcs8(KeySpec::Rsa4096, &doc).is_err(), "the size must be the spec's");
        assert!(DecryptionKey::from_pkcs8(KeySpec::EccNistP256, &doc).is_err());
    }

    #[test]
    fn ecdh_agrees_with_a_peer_on_the_same_curve_only() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        for (spec, len) in [(KeySpec::EccNistP256, 32), (KeySpec::EccNistP384, 48), (KeySpec::EccNistP521, 66)] {
            let doc = SigningKey::generate_pkcs8(spec).unwrap();
            let k = AgreementKey::from_pkcs8(spec, &doc).unwrap();
            assert_eq!(k.spec(), spec);
            assert_eq!(k.public_key_der(), SigningKey::from_pkcs8(spec, &doc).unwrap().public_key_der().unwrap());
            // A peer: its own key, the secret from its side must be the same.
            let peer_doc = SigningKey::generate_pkcs8(spec).unwrap();
            let peer = AgreementKey::from_pkcs8(spec, &peer_doc).unwrap();
            let ours = k.derive(&peer.public_key_der()).unwrap();
            assert_eq!(ours.len(), len);
            assert_eq!(ours, peer.derive(&k.public_key_der()).unwrap());
            // Not an SPKI: the raw point is refused, as is garbage.
            let alg = ecdh(spec).unwrap();
            let raw = aws_lc_rs::agreement::PrivateKey::from_private_key_der(alg, &peer_doc)
                .unwrap()
                .compute_public_key()
                .unwrap();
            assert!(matches!(k.derive(raw.as_ref()), Err(Error::Invalid(_))));
            let spki: PublicKeyX509Der<'static> = raw.as_der().unwrap();
            assert_eq!(spki.as_ref(), &peer.public_key_der()[..]);
            assert!(matches!(k.derive(b"not a key"), Err(Error::Invalid(_))));
        }
        let p256 =
            AgreementKey::from_pkcs8(KeySpec::EccNistP256, &SigningKey::generate_pkcs8(KeySpec::EccNistP256).unwrap())
                .unwrap();
        let p384 =
            AgreementKey::from_pkcs8(KeySpec::EccNistP384, &SigningKey::generate_pkcs8(KeySpec::EccNistP384).unwrap())
                .unwrap();
        assert!(matches!(p256.derive(&p384.public_key_der()), Err(Error::Invalid(_))), "another curve");
        let rsa = SigningKey::generate_pkcs8(KeySpec::Rsa2048).unwrap();
        let rsa_pub = SigningKey::from_pkcs8(KeySpec::Rsa2048, &rsa).unwrap().public_key_der().unwrap();
        assert!(matches!(p256.derive(&rsa_pub), Err(Error::Invalid(_))), "an RSA key");
        assert!(
            AgreementKey::from_pkcs8(KeySpec::EccNistP384, &SigningKey::generate_pkcs8(KeySpec::EccNistP256).unwrap())
                .is_err()
        );
    }

    #[test]
    fn nonces_differ() {
        let k = AeadKey::new(&[7u8; 32]).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        k.seal_into(b"", b"same", &mut a).unwrap();
        k.seal_into(b"", b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }
}
