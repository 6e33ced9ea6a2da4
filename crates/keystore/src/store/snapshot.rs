//! The in-memory snapshot: keys, aliases, attributes and unsealed material, replaced whole on
//! every refresh. Encrypt, decrypt and the reads below use only the snapshot (no SQL).

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::engine::Rows;
use super::{
    Core, Decrypted, Encrypted, KeyStore, MAX_PLAINTEXT, parse_key_id, parse_material_id, poisoned, seal_aad_for,
};
use crate::blob;
use crate::context::EncryptionContext;
use crate::crypto::{AeadKey, AgreementKey, DecryptionKey, MacKey, NONCE_LEN, Signed, SigningKey, fill_random};
use crate::error::{Error, Result};
use crate::model::{
    EncryptionAlgorithm, Grant, ImportedMaterial, KeyAttributes, KeyMetadata, KeyRef, KeySpec, KeyState, KeyUsage,
    KeyVersion, MacAlgorithm, MaterialState, Rotation, RotationType, SigningAlgorithm,
};

/// One material version, unsealed: typed by its key's spec and usage, so material of one kind
/// of key is never used as another's.
pub(super) struct Material {
    pub(super) key_id: [u8; 16],
    pub(super) spec: KeySpec,
    pub(super) usage: KeyUsage,
    pub(super) secret: Secret,
}

/// Unsealed material, by what it does.
pub(super) enum Secret {
    /// A symmetric encryption key.
    Aead(AeadKey),
    /// An HMAC key (boxed: AWS-LC's HMAC context is large).
    Mac(Box<MacKey>),
    /// A signing key pair.
    Sign(Box<SigningKey>),
    /// An RSA encryption key pair.
    Decrypt(Box<DecryptionKey>),
    /// An ECDH key.
    Agree(Box<AgreementKey>),
}

#[derive(Default)]
pub(super) struct Snapshot {
    /// The engine's change counter this snapshot was read at (`None`: not kept, or never read).
    pub(super) version: Option<i64>,
    pub(super) keys: HashMap<[u8; 16], KeyMetadata>,
    pub(super) current: HashMap<[u8; 16], [u8; 32]>,
    pub(super) aliases: HashMap<String, [u8; 16]>,
    pub(super) materials: HashMap<[u8; 32], Arc<Material>>,
    pub(super) attrs: HashMap<[u8; 16], Arc<KeyAttributes>>,
    /// Every grant, by grant id.
    pub(super) grants: HashMap<String, Arc<Grant>>,
}

impl Core {
    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reads the whole store and publishes a new snapshot (material already in memory is reused,
    /// new material unsealed).
    pub(super) fn refresh(&self) -> Result<()> {
        let _order = self.refreshing.lock().map_err(|_| poisoned())?;
        if let Some(change) = self.db.change()?
            && self.snapshot().version == Some(change)
        {
            return Ok(());
        }
        let rows = self.db.load()?;
        let snap = self.build(rows)?;
        *self.snap.write().map_err(|_| poisoned())? = Arc::new(snap);
        Ok(())
    }

    fn build(&self, rows: Rows) -> Result<Snapshot> {
        let old = self.snapshot();
        let mut keys: HashMap<[u8; 16], KeyMetadata> = HashMap::new();
        let mut attrs: HashMap<[u8; 16], KeyAttributes> = HashMap::new();
        let mut current = HashMap::new();
        let mut specs: HashMap<[u8; 16], (KeySpec, KeyUsage)> = HashMap::new();
        for k in rows.keys {
            let kid = parse_key_id(&k.key_id)?;
            let key_spec = KeySpec::parse(&k.key_spec)?;
            let key_usage = KeyUsage::parse(&k.key_usage)?;
            if !key_spec.usages().contains(&key_usage) {
                return Err(Error::Storage(format!(
                    "key {} has key usage {key_usage}, which a {key_spec} key cannot have",
                    k.key_id
                )));
            }
            specs.insert(kid, (key_spec, key_usage));
            attrs.insert(
                kid,
                KeyAttributes {
                    deletion_date: k.deletion_date,
                    pending_window_days: k.pending_window_days,
                    rotation_period_days: k.rotation_period_days,
                    next_rotation: k.next_rotation,
                    ..KeyAttributes::default()
                },
            );
            // An external key without imported material has no current material ('').
            if !k.current_material.is_empty() {
                current.insert(kid, parse_material_id(&k.current_material)?);
            }
            keys.insert(
                kid,
                KeyMetadata {
                    key_id: k.key_id,
                    description: k.description,
                    state: KeyState::parse(&k.state)?,
                    created_at: k.created_at,
                    current_material_id: k.current_material,
                    versions: Vec::new(),
                    aliases: Vec::new(),
                    key_spec,
                    key_usage,
                },
            );
        }
        let mut aliases = HashMap::new();
        for a in rows.aliases {
            let kid = parse_key_id(&a.key_id)?;
            if let Some(k) = keys.get_mut(&kid) {
                k.aliases.push(a.name.clone());
            }
            aliases.insert(a.name, kid);
        }
        let mut materials = HashMap::new();
        for v in rows.versions {
            let mid = parse_material_id(&v.material_id)?;
            let kid = parse_key_id(&v.key_id)?;
            if let Some(a) = attrs.get_mut(&kid) {
                // Versions written before schema 3 have no type: later ones were explicit rotations.
                let kind = match (v.seq, v.rotation_type.as_deref()) {
                    (_, Some("AUTOMATIC")) => RotationType::Automatic,
                    (1, None) => RotationType::Initial,
                    _ => RotationType::OnDemand,
                };
                a.rotations.push(Rotation {
                    material_id: v.material_id.clone(),
                    seq: v.seq,
                    created_at: v.created_at,
                    kind,
                });
            }
            if let Some(k) = keys.get_mut(&kid) {
                k.versions.push(KeyVersion { material_id: v.material_id, seq: v.seq, created_at: v.created_at });
            }
            // A version belongs to a key (foreign key); its spec decides how it unseals.
            let (spec, usage) = specs.get(&kid).copied().unwrap_or_default();
            let m = match old.materials.get(&mid).filter(|m| m.key_id == kid && m.spec == spec && m.usage == usage) {
                Some(m) => m.clone(),
                None => Arc::new(self.unseal(&kid, &mid, spec, usage, &v.sealed)?),
            };
            materials.insert(mid, m);
        }
        for t in rows.tags {
            if let Some(a) = attrs.get_mut(&parse_key_id(&t.key_id)?) {
                a.tags.push((t.key, t.value));
            }
        }
        for i in rows.imports {
            if let Some(a) = attrs.get_mut(&parse_key_id(&i.key_id)?) {
                a.external = true;
            }
        }
        for m in rows.materials {
            if let Some(a) = attrs.get_mut(&parse_key_id(&m.key_id)?) {
                a.materials.push(ImportedMaterial {
                    material_id: m.material_id,
                    seq: m.seq,
                    state: MaterialState::parse(&m.state)?,
                    imported: m.imported,
                    description: m.description,
                    valid_to: m.valid_to,
                    created_at: m.created_at,
                    rotated_at: m.rotated_at,
                });
            }
        }
        for a in attrs.values_mut().filter(|a| a.external) {
            // An external key's rotations are its materials' (deleted ones included), not its
            // versions': the first material, then each one an on-demand rotation made current.
            let current = a.materials.iter().find(|m| m.state == MaterialState::Current);
            a.imported_material_id = current.map(|m| m.material_id.clone());
            a.valid_to = current.filter(|m| m.imported).and_then(|m| m.valid_to);
            a.rotations = a
                .materials
                .iter()
                .filter(|m| m.state != MaterialState::PendingRotation)
                .map(|m| Rotation {
                    material_id: m.material_id.clone(),
                    seq: m.seq,
                    created_at: m.rotated_at.unwrap_or(m.created_at),
                    kind: if m.rotated_at.is_some() { RotationType::OnDemand } else { RotationType::Initial },
                })
                .collect();
        }
        for p in rows.policies {
            let kid = parse_key_id(&p.key_id)?;
            if let Some(a) = attrs.get_mut(&kid) {
                // Keep the same allocation when unchanged, so callers can cache by pointer.
                a.policy = match old.attrs.get(&kid).and_then(|o| o.policy.clone()) {
                    Some(o) if *o == *p.policy => Some(o),
                    _ => Some(Arc::from(p.policy)),
                };
            }
        }
        let mut grants = HashMap::new();
        for g in rows.grants {
            let kid = parse_key_id(&g.key_id)?;
            let g = Arc::new(g.grant()?);
            if let Some(a) = attrs.get_mut(&kid) {
                a.grants.push(g.clone());
            }
            grants.insert(g.grant_id.clone(), g);
        }
        let attrs = attrs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        Ok(Snapshot { version: rows.version, keys, current, aliases, materials, attrs, grants })
    }

    /// Unseals one version of key `kid` (of `spec` and `usage`): the material must open under
    /// the spec's (and usage's) additional data and have a length the spec allows.
    pub(super) fn unseal(
        &self,
        kid: &[u8; 16],
        mid: &[u8; 32],
        spec: KeySpec,
        usage: KeyUsage,
        sealed: &[u8],
    ) -> Result<Material> {
        let material = self.root.open(&seal_aad_for(spec, usage, kid, mid), sealed)?;
        if let Some(lens) = spec.material_lens()
            && !lens.contains(&material.len())
        {
            return Err(Error::RootKey(format!(
                "key material of key {} is {} bytes, not {}–{} as a {spec} key's",
                uuid::Uuid::from_bytes(*kid),
                material.len(),
                lens.start(),
                lens.end(),
            )));
        }
        let not_a_pair = |_| {
            Error::RootKey(format!("key material of key {} is not a {spec} key pair", uuid::Uuid::from_bytes(*kid)))
        };
        let secret = match (spec.mac_algorithm(), spec.is_key_pair(), usage) {
            (Some(alg), _, _) => Secret::Mac(Box::new(MacKey::new(alg, &material))),
            (None, true, KeyUsage::EncryptDecrypt) => {
                Secret::Decrypt(Box::new(DecryptionKey::from_pkcs8(spec, &material).map_err(not_a_pair)?))
            }
            (None, true, KeyUsage::KeyAgreement) => {
                Secret::Agree(Box::new(AgreementKey::from_pkcs8(spec, &material).map_err(not_a_pair)?))
            }
            (None, true, _) => Secret::Sign(Box::new(SigningKey::from_pkcs8(spec, &material).map_err(not_a_pair)?)),
            (None, false, _) => Secret::Aead(AeadKey::new(&material)?),
        };
        Ok(Material { key_id: *kid, spec, usage, secret })
    }
}

impl KeyStore {
    /// The key's management attributes, from the in-memory snapshot. Cheap (an `Arc` clone).
    pub fn attributes(&self, key: &KeyRef) -> Result<Arc<KeyAttributes>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        snap.attrs.get(&kid).cloned().ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Describes a key from the in-memory snapshot.
    pub fn describe(&self, key: &KeyRef) -> Result<KeyMetadata> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        snap.keys.get(&kid).cloned().ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Lists all keys, ordered by creation time.
    pub fn list(&self) -> Result<Vec<KeyMetadata>> {
        let snap = self.core.snapshot();
        let mut v: Vec<_> = snap.keys.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(v)
    }

    /// The key's state and current material id, from the snapshot. Cheap. A key without
    /// material (external, not imported) is [`Error::InvalidState`].
    pub fn current(&self, key: &KeyRef) -> Result<([u8; 16], [u8; 32], KeyState)> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        let state = snap.keys.get(&kid).map(|k| k.state).ok_or_else(|| Error::NotFound(key.to_string()))?;
        let mid = *snap.current.get(&kid).ok_or_else(|| Error::InvalidState { key: key.to_string(), state })?;
        Ok((kid, mid, state))
    }

    /// The key's binary id, state, spec and usage, from the snapshot. Cheap; works for keys
    /// without material.
    pub fn kind(&self, key: &KeyRef) -> Result<([u8; 16], KeyState, KeySpec, KeyUsage)> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        let k = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(key.to_string()))?;
        Ok((kid, k.state, k.key_spec, k.key_usage))
    }

    /// The HMAC of `message` under the current material of an HMAC key, whose spec must be
    /// `algorithm`'s ([`Error::WrongKeyType`] otherwise; any other key too). From the snapshot.
    pub fn generate_mac(&self, key: &KeyRef, algorithm: MacAlgorithm, message: &[u8]) -> Result<Vec<u8>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        Ok(mac_key(&snap, kid, algorithm)?.sign(message))
    }

    /// Whether `mac` is the HMAC of `message` under the current material of an HMAC key
    /// (compared in constant time); the key and algorithm as for [`KeyStore::generate_mac`].
    pub fn verify_mac(&self, key: &KeyRef, algorithm: MacAlgorithm, message: &[u8], mac: &[u8]) -> Result<bool> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        Ok(mac_key(&snap, kid, algorithm)?.verify(message, mac))
    }

    /// A signature of `what` under the current key pair of a signing key, whose spec must be
    /// `algorithm`'s ([`Error::WrongKeyType`] otherwise; any other key too). From the snapshot.
    pub fn sign(&self, key: &KeyRef, algorithm: SigningAlgorithm, what: Signed<'_>) -> Result<Vec<u8>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        signing_key(&snap, kid, Some(algorithm))?.sign(algorithm, what)
    }

    /// Whether `signature` is the signature of `what` under the current key pair of a signing
    /// key (as for [`KeyStore::sign`]).
    pub fn verify(
        &self,
        key: &KeyRef,
        algorithm: SigningAlgorithm,
        what: Signed<'_>,
        signature: &[u8],
    ) -> Result<bool> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        signing_key(&snap, kid, Some(algorithm))?.verify(algorithm, what, signature)
    }

    /// The DER SubjectPublicKeyInfo of a key pair's current material (signing, RSA encryption
    /// or key agreement key; [`Error::WrongKeyType`] for any other key).
    pub fn public_key(&self, key: &KeyRef) -> Result<Vec<u8>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(key.to_string()))?;
        match current_secret(&snap, kid)? {
            Secret::Sign(k) => k.public_key_der(),
            Secret::Decrypt(k) => Ok(k.public_key_der()),
            Secret::Agree(k) => Ok(k.public_key_der()),
            _ => Err(wrong_type(meta, "it is not a key pair")),
        }
    }

    /// The RSA-OAEP encryption of `plaintext` with `algorithm` under the current key pair of an
    /// RSA `ENCRYPT_DECRYPT` key ([`Error::WrongKeyType`] for any other key; a plaintext longer
    /// than the algorithm allows is [`Error::Invalid`]). From the snapshot.
    pub fn rsa_encrypt(&self, key: &KeyRef, algorithm: EncryptionAlgorithm, plaintext: &[u8]) -> Result<Vec<u8>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        decryption_key(&snap, kid)?.encrypt(algorithm, plaintext)
    }

    /// The plaintext of an RSA-OAEP `ciphertext` made with `algorithm` under the current key
    /// pair of an RSA `ENCRYPT_DECRYPT` key (as for [`KeyStore::rsa_encrypt`]); anything that
    /// does not decrypt is [`Error::InvalidCiphertext`].
    pub fn rsa_decrypt(
        &self,
        key: &KeyRef,
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        decryption_key(&snap, kid)?.decrypt(algorithm, ciphertext)
    }

    /// The ECDH shared secret of the current key of a `KEY_AGREEMENT` key with the peer whose
    /// public key is the DER SubjectPublicKeyInfo `peer` (on the key's curve; [`Error::Invalid`]
    /// otherwise, [`Error::WrongKeyType`] for any other key). From the snapshot.
    pub fn derive_shared_secret(&self, key: &KeyRef, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(key.to_string()))?;
        check_usable(meta)?;
        match current_secret(&snap, kid)? {
            Secret::Agree(k) if meta.key_usage == KeyUsage::KeyAgreement && k.spec() == meta.key_spec => k.derive(peer),
            _ => Err(wrong_type(meta, "it is not a key agreement key")),
        }
    }

    /// The key's binary id and state, from the snapshot. Cheap; works for keys without material.
    pub fn state(&self, key: &KeyRef) -> Result<([u8; 16], KeyState)> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        let state = snap.keys.get(&kid).map(|k| k.state).ok_or_else(|| Error::NotFound(key.to_string()))?;
        Ok((kid, state))
    }

    /// Encrypts with the key's current material. The context is bound as AAD.
    pub fn encrypt(&self, key: &KeyRef, plaintext: &[u8], ctx: &EncryptionContext) -> Result<Encrypted> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        encrypt_with(&snap, kid, None, plaintext, ctx)
    }

    /// Encrypts with a specific material version of the key (normally the current one). Lets a
    /// caller that derived an identifier from `(key, material)` be sure the ciphertext matches it
    /// even if a rotation happens concurrently.
    pub fn encrypt_with_material(
        &self,
        key: &KeyRef,
        material_id: &[u8; 32],
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted> {
        let snap = self.core.snapshot();
        let kid = resolve(&snap, key)?;
        encrypt_with(&snap, kid, Some(material_id), plaintext, ctx)
    }

    /// Whether the material that made `data` is already in memory, so [`KeyStore::decrypt`] will
    /// not touch the database (callers on async threads use this to pick the blocking pool).
    pub fn is_cached(&self, data: &[u8]) -> bool {
        blob::parse(data).is_ok_and(|b| self.core.snapshot().materials.contains_key(&b.material_id))
    }

    /// Decrypts a blob made by [`KeyStore::encrypt`] with the same context.
    pub fn decrypt(&self, data: &[u8], ctx: &EncryptionContext) -> Result<Decrypted> {
        let b = blob::parse(data)?;
        let mut snap = self.core.snapshot();
        if !snap.materials.contains_key(&b.material_id) && self.core.db.has_material(&hex::encode(b.material_id))? {
            self.refresh()?;
            snap = self.core.snapshot();
        }
        let material = snap
            .materials
            .get(&b.material_id)
            .ok_or_else(|| Error::NotFound(format!("key material {}", hex::encode(b.material_id))))?;
        if material.key_id != b.key_id {
            return Err(Error::InvalidCiphertext("key id does not match key material"));
        }
        let meta = snap.keys.get(&b.key_id).ok_or(Error::InvalidCiphertext("unknown key"))?;
        check_usable(meta)?;
        let Secret::Aead(aead) = &material.secret else {
            return Err(wrong_type(meta, "it does not decrypt"));
        };
        let plaintext = blob::open(aead, &b, ctx)?;
        Ok(Decrypted { plaintext, key_id: b.key_id, material_id: b.material_id })
    }
}

fn encrypt_with(
    snap: &Snapshot,
    kid: [u8; 16],
    want: Option<&[u8; 32]>,
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Encrypted> {
    if plaintext.is_empty() {
        return Err(Error::Invalid("plaintext is empty".into()));
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::Invalid(format!("plaintext is longer than {MAX_PLAINTEXT} bytes")));
    }
    let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
    check_usable(meta)?;
    if meta.key_usage != KeyUsage::EncryptDecrypt {
        return Err(wrong_type(meta, "it does not encrypt"));
    }
    let mid = match want {
        Some(w) => *w,
        None => *snap
            .current
            .get(&kid)
            .ok_or_else(|| Error::InvalidState { key: meta.key_id.clone(), state: KeyState::PendingImport })?,
    };
    let material = snap
        .materials
        .get(&mid)
        .filter(|m| m.key_id == kid)
        .ok_or_else(|| Error::NotFound(format!("{} material {}", meta.key_id, hex::encode(mid))))?;
    let Secret::Aead(aead) = &material.secret else {
        return Err(wrong_type(meta, "it does not encrypt"));
    };
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let out = blob::seal(aead, &kid, &mid, nonce, plaintext, ctx)?;
    Ok(Encrypted { blob: out, key_id: kid, material_id: mid })
}

/// The current HMAC key of key `kid`, usable, of `algorithm`'s spec.
fn mac_key(snap: &Snapshot, kid: [u8; 16], algorithm: MacAlgorithm) -> Result<&MacKey> {
    let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
    check_usable(meta)?;
    match meta.key_spec.mac_algorithm() {
        None => return Err(wrong_type(meta, "it does not compute MACs")),
        Some(a) if a != algorithm => return Err(wrong_type(meta, "the MAC algorithm is not the key spec's")),
        Some(_) => {}
    }
    let mid = snap
        .current
        .get(&kid)
        .ok_or_else(|| Error::InvalidState { key: meta.key_id.clone(), state: KeyState::PendingImport })?;
    match snap.materials.get(mid).filter(|m| m.key_id == kid).map(|m| &m.secret) {
        Some(Secret::Mac(k)) if k.algorithm() == algorithm => Ok(&**k),
        Some(_) => Err(wrong_type(meta, "its material is not an HMAC key of that algorithm")),
        None => Err(Error::NotFound(format!("{} material {}", meta.key_id, hex::encode(mid)))),
    }
}

/// The current key pair of signing key `kid`, usable, of `algorithm`'s spec (if given).
fn signing_key(snap: &Snapshot, kid: [u8; 16], algorithm: Option<SigningAlgorithm>) -> Result<&SigningKey> {
    let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
    check_usable(meta)?;
    if !meta.key_spec.is_signing() || meta.key_usage != KeyUsage::SignVerify {
        return Err(wrong_type(meta, "it does not sign"));
    }
    if algorithm.is_some_and(|a| !meta.key_spec.signing_algorithms().contains(&a)) {
        return Err(wrong_type(meta, "the signing algorithm is not one of the key spec's"));
    }
    let mid = snap
        .current
        .get(&kid)
        .ok_or_else(|| Error::InvalidState { key: meta.key_id.clone(), state: KeyState::PendingImport })?;
    match snap.materials.get(mid).filter(|m| m.key_id == kid).map(|m| &m.secret) {
        Some(Secret::Sign(k)) if k.spec() == meta.key_spec => Ok(&**k),
        Some(_) => Err(wrong_type(meta, "its material is not a key pair of that algorithm")),
        None => Err(Error::NotFound(format!("{} material {}", meta.key_id, hex::encode(mid)))),
    }
}

/// The unsealed current material of key `kid`.
fn current_secret(snap: &Snapshot, kid: [u8; 16]) -> Result<&Secret> {
    let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
    let mid = snap
        .current
        .get(&kid)
        .ok_or_else(|| Error::InvalidState { key: meta.key_id.clone(), state: KeyState::PendingImport })?;
    snap.materials
        .get(mid)
        .filter(|m| m.key_id == kid)
        .map(|m| &m.secret)
        .ok_or_else(|| Error::NotFound(format!("{} material {}", meta.key_id, hex::encode(mid))))
}

/// The current key pair of RSA encryption key `kid`, usable.
fn decryption_key(snap: &Snapshot, kid: [u8; 16]) -> Result<&DecryptionKey> {
    let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
    check_usable(meta)?;
    match current_secret(snap, kid)? {
        Secret::Decrypt(k) if meta.key_usage == KeyUsage::EncryptDecrypt && k.spec() == meta.key_spec => Ok(&**k),
        _ => Err(wrong_type(meta, "it is not an RSA encryption key")),
    }
}

fn wrong_type(meta: &KeyMetadata, why: &'static str) -> Error {
    Error::WrongKeyType { key: meta.key_id.clone(), spec: meta.key_spec, usage: meta.key_usage, why }
}

fn check_usable(meta: &KeyMetadata) -> Result<()> {
    match meta.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(Error::Disabled(meta.key_id.clone())),
        state => Err(Error::InvalidState { key: meta.key_id.clone(), state }),
    }
}

pub(super) fn resolve(snap: &Snapshot, key: &KeyRef) -> Result<[u8; 16]> {
    match key {
        KeyRef::Id(u) => {
            let kid = *u.as_bytes();
            if snap.keys.contains_key(&kid) { Ok(kid) } else { Err(Error::NotFound(key.to_string())) }
        }
        KeyRef::Alias(a) => snap.aliases.get(a).copied().ok_or_else(|| Error::NotFound(a.clone())),
    }
}
