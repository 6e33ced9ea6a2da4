//! Key objects in the token: which one is current, creation and rotation inside the token,
//! listing, enabling and disabling.
//!
//! A key is a set of AES-256 secret-key objects sharing one `CKA_LABEL` (labels are not unique
//! in PKCS#11). Objects made by envelope have a 16-byte `CKA_ID`: a 4-byte big-endian
//! generation ‖ 12 random bytes. The current object is the one of the highest generation;
//! rotation adds an object of the next generation (one atomic `C_GenerateKey`), and older
//! objects keep decrypting until an operator destroys them. Blobs name their object by
//! `CKA_ID`, never by label.

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use envelope_plugin::PluginError;

use crate::blob::pkcs11_key_id;
use crate::classify::{Failure, pkcs11};
use crate::module::Module;
use crate::pin::PinSource;
use crate::pool::{Pkcs11Config, Pool, Pooled};

/// What a key object looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// Generation read from `CKA_ID` (0 for objects not made by envelope).
    pub generation: u32,
    /// The KMS v2 key_id of blobs made by this object.
    pub key_id: String,
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
    /// `CKA_VALUE_LEN` (32 for AES-256).
    pub value_len: u64,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// Whether this is the current object of its label.
    pub current: bool,
}

impl KeyInfo {
    /// How the object is named in messages: `key "k8s" (CKA_ID 00000001a1b2…)`.
    pub fn describe(&self) -> String {
        format!("key {:?} (CKA_ID {})", self.label, hex::encode(&self.id))
    }

    /// Why this object cannot serve as the plugin's key, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        let d = self.describe();
        if self.value_len != 32 {
            return Some(format!("{d} is a {}-bit AES key; AES-256 is required", self.value_len * 8));
        }
        match (self.encrypt, self.decrypt) {
            (false, false) => Some(format!("{d} is disabled (CKA_ENCRYPT and CKA_DECRYPT are false)")),
            (true, false) => Some(format!("{d} is disabled for decryption (CKA_DECRYPT is false)")),
            (false, true) => Some(format!("{d} is disabled for encryption (CKA_ENCRYPT is false)")),
            (true, true) => None,
        }
    }
}

/// The generation recorded in an envelope `CKA_ID` (16 bytes); 0 for any other id.
pub fn generation(id: &[u8]) -> u32 {
    match id {
        [a, b, c, d, _, _, _, _, _, _, _, _, _, _, _, _] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// The current object among `keys` (all of one label): the highest generation. Two objects
/// sharing it make the choice ambiguous, which is an error rather than a guess.
pub fn choose_current<'a>(label: &str, keys: &'a [KeyInfo]) -> Result<&'a KeyInfo, PluginError> {
    let Some(top) = keys.iter().map(|k| k.generation).max() else {
        return Err(PluginError::UnknownKey(format!(
            "no AES key labelled {label:?} in the token (create one: envelope key create --backend pkcs11)"
        )));
    };
    let mut at_top = keys.iter().filter(|k| k.generation == top);
    match (at_top.next(), at_top.next()) {
        (Some(k), None) => Ok(k),
        _ => Err(PluginError::KeyUnusable(format!(
            "several AES keys labelled {label:?} share generation {top}; destroy or relabel all but one"
        ))),
    }
}

fn label_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn read_info(s: &Pooled, h: ObjectHandle, label: &str) -> Result<KeyInfo, Failure> {
    let what = format!("reading the attributes of key {label:?}");
    let attrs = s
        .session()?
        .get_attributes(
            h,
            &[
                AttributeType::Id,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .map_err(pkcs11(what))?;
    let mut k = KeyInfo {
        label: label.to_string(),
        id: Vec::new(),
        generation: 0,
        key_id: String::new(),
        encrypt: false,
        decrypt: false,
        value_len: 0,
        sensitive: false,
        extractable: true,
        current: false,
    };
    for a in attrs {
        match a {
            Attribute::Id(id) => k.id = id,
            Attribute::Encrypt(b) => k.encrypt = b,
            Attribute::Decrypt(b) => k.decrypt = b,
            Attribute::ValueLen(n) => k.value_len = u64::from(n),
            Attribute::Sensitive(b) => k.sensitive = b,
            Attribute::Extractable(b) => k.extractable = b,
            _ => {}
        }
    }
    k.generation = generation(&k.id);
    k.key_id = pkcs11_key_id(&k.id);
    Ok(k)
}

/// Every AES key object labelled `label`, with its handle; the current one marked.
pub fn list(s: &Pooled, label: &str) -> Result<Vec<(ObjectHandle, KeyInfo)>, Failure> {
    let handles =
        s.session()?.find_objects(&label_template(label)).map_err(pkcs11(format!("finding key {label:?}")))?;
    if handles.is_empty() {
        if !s.logged_in()? {
            return Err(Failure::NotLoggedIn);
        }
        s.check_token()?;
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push((h, read_info(s, h, label)?));
    }
    let infos: Vec<KeyInfo> = out.iter().map(|(_, k)| k.clone()).collect();
    if let Ok(cur) = choose_current(label, &infos) {
        let cur_id = cur.id.clone();
        for (_, k) in &mut out {
            k.current = k.id == cur_id;
        }
    }
    Ok(out)
}

/// The current object of `label`.
pub fn current(s: &Pooled, label: &str) -> Result<(ObjectHandle, KeyInfo), Failure> {
    let all = list(s, label)?;
    let infos: Vec<KeyInfo> = all.iter().map(|(_, k)| k.clone()).collect();
    let cur = choose_current(label, &infos)?;
    all.into_iter()
        .find(|(_, k)| k.id == cur.id)
        .ok_or_else(|| Failure::Plugin(PluginError::Internal("current key vanished from its own list".into())))
}

/// The handle of the secret-key object with `CKA_ID` `id`, cached in the session.
pub fn handle(s: &mut Pooled, id: &[u8]) -> Result<ObjectHandle, Failure> {
    if let Some(h) = s.handles.get(id) {
        return Ok(*h);
    }
    let what = format!("key object CKA_ID {}", hex::encode(id));
    let found = s
        .session()?
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(id.to_vec())])
        .map_err(pkcs11(what.clone()))?;
    match found.as_slice() {
        [h] => {
            s.handles.insert(id.to_vec(), *h);
            Ok(*h)
        }
        [] if !s.logged_in()? => Err(Failure::NotLoggedIn),
        [] if let Err(f) = s.check_token() => Err(f),
        [] => Err(Failure::Plugin(PluginError::UnknownKey(format!("no {what} in the token (destroyed?)")))),
        several => Err(Failure::Plugin(PluginError::KeyUnusable(format!(
            "{} objects share the {what}; CKA_ID must be unique",
            several.len()
        )))),
    }
}

fn generate(s: &Pooled, label: &str, generation: u32) -> Result<KeyInfo, Failure> {
    let mut id = vec![0u8; 16];
    id[..4].copy_from_slice(&generation.to_be_bytes());
    aws_lc_rs::rand::fill(&mut id[4..])
        .map_err(|_| Failure::Plugin(PluginError::Internal("the system random generator failed".into())))?;
    let template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Modifiable(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    let h = s
        .session()?
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(pkcs11(format!("generating key {label:?} in the token")))?;
    let mut k = read_info(s, h, label)?;
    k.current = true;
    Ok(k)
}

/// Administration of the keys of one token (the `envelope key … --backend pkcs11` commands and
/// tests): a read-write session, blocking calls.
pub struct Token {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("pool", &self.pool).finish()
    }
}

impl Token {
    /// Opens the token of `config` (its `key_label` and `sessions` are not used here).
    pub fn open(config: &Pkcs11Config) -> Result<Self, PluginError> {
        let module = Module::load(&config.module)?;
        let pool = Pool::new(module, config.token.clone(), PinSource::file(&config.pin_file), 1, true);
        Ok(Self { pool: Arc::new(pool) })
    }

    /// Creates the first object of `label`; refused if the label is taken.
    pub fn create_key(&self, label: &str) -> Result<KeyInfo, PluginError> {
        self.pool.run(&|s| {
            let existing = list(s, label)?;
            if !existing.is_empty() {
                return Err(Failure::Plugin(PluginError::InvalidRequest(format!(
                    "{} AES key object(s) labelled {label:?} already exist; rotate it instead",
                    existing.len()
                ))));
            }
            generate(s, label, 1)
        })
    }

    /// Adds an object of the next generation to `label`: it becomes current.
    pub fn rotate_key(&self, label: &str) -> Result<KeyInfo, PluginError> {
        self.pool.run(&|s| {
            let existing = list(s, label)?;
            let infos: Vec<KeyInfo> = existing.into_iter().map(|(_, k)| k).collect();
            let top = choose_current(label, &infos)?.generation;
            let next = top
                .checked_add(1)
                .ok_or_else(|| Failure::Plugin(PluginError::InvalidRequest("generation counter exhausted".into())))?;
            generate(s, label, next)
        })
    }

    /// The objects labelled `label`, oldest generation first.
    pub fn list_keys(&self, label: &str) -> Result<Vec<KeyInfo>, PluginError> {
        let mut v: Vec<KeyInfo> = self.pool.run(&|s| Ok(list(s, label)?.into_iter().map(|(_, k)| k).collect()))?;
        v.sort_by(|a, b| (a.generation, &a.id).cmp(&(b.generation, &b.id)));
        Ok(v)
    }

    /// Sets `CKA_ENCRYPT` and `CKA_DECRYPT` of every object labelled `label` (disable: neither
    /// encrypts nor decrypts; enable: both again).
    pub fn set_enabled(&self, label: &str, enabled: bool) -> Result<usize, PluginError> {
        self.set_usage(label, enabled, enabled)
    }

    /// Sets `CKA_ENCRYPT` to `encrypt` and `CKA_DECRYPT` to `decrypt` on every object labelled
    /// `label`; returns how many.
    pub fn set_usage(&self, label: &str, encrypt: bool, decrypt: bool) -> Result<usize, PluginError> {
        self.pool.run(&|s| {
            let all = list(s, label)?;
            if all.is_empty() {
                return Err(Failure::Plugin(PluginError::UnknownKey(format!("no AES key labelled {label:?}"))));
            }
            for (h, k) in &all {
                s.session()?
                    .update_attributes(*h, &[Attribute::Encrypt(encrypt), Attribute::Decrypt(decrypt)])
                    .map_err(pkcs11(k.describe()))?;
            }
            Ok(all.len())
        })
    }

    /// Destroys the object with `CKA_ID` `id` (its blobs no longer decrypt).
    pub fn destroy(&self, id: &[u8]) -> Result<(), PluginError> {
        self.pool.run(&|s| {
            let h = handle(s, id)?;
            s.session()?.destroy_object(h).map_err(pkcs11(format!("destroying CKA_ID {}", hex::encode(id))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: Vec<u8>) -> KeyInfo {
        KeyInfo {
            label: "k".into(),
            generation: generation(&id),
            key_id: pkcs11_key_id(&id),
            id,
            encrypt: true,
            decrypt: true,
            value_len: 32,
            sensitive: true,
            extractable: false,
            current: false,
        }
    }

    fn id(g: u32, r: u8) -> Vec<u8> {
        let mut v = g.to_be_bytes().to_vec();
        v.extend_from_slice(&[r; 12]);
        v
    }

    #[test]
    fn the_highest_generation_is_current() {
        let keys = vec![info(id(1, 1)), info(id(3, 2)), info(id(2, 3)), info(b"foreign".to_vec())];
        assert_eq!(choose_current("k", &keys).unwrap().id, id(3, 2));
        assert_eq!(generation(b"foreign"), 0);
        assert!(matches!(choose_current("k", &[]), Err(PluginError::UnknownKey(_))));
        let tie = vec![info(id(3, 1)), info(id(3, 2))];
        let e = choose_current("k", &tie).unwrap_err();
        assert!(e.to_string().contains("share generation 3"), "{e}");
    }

    #[test]
    fn unusable_keys_say_why() {
        let mut k = info(id(1, 1));
        assert_eq!(k.unusable(), None);
        k.decrypt = false;
        assert!(k.unusable().unwrap().contains("CKA_DECRYPT is false"));
        k.encrypt = false;
        assert!(k.unusable().unwrap().contains("is disabled"));
        k.encrypt = true;
        k.decrypt = true;
        k.value_len = 16;
        assert!(k.unusable().unwrap().contains("128-bit"));
    }
}
