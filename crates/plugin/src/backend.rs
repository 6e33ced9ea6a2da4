//! The key backend abstraction and the embedded key-store backend.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use envelope_keystore::{EncryptionContext, KeyRef, KeyState, KeyStore};
use zeroize::Zeroizing;

use crate::error::PluginError;
use crate::format::{self, BackendKind};
use crate::plugin::{v1_context, v2_context};

/// What a health probe learned about the configured key.
#[derive(Debug, Clone)]
pub struct Probe<V> {
    /// The KMS v2 key_id of the key's current version.
    pub key_id: String,
    /// Backend-specific handle of that version, used by Encrypt so that the ciphertext always
    /// matches the key_id that Status reported.
    pub version: V,
}

/// A place that holds the master key and wraps/unwraps data keys with it.
///
/// Implementations must bind `ctx` into the wrap (as AEAD additional data or the KMS encryption
/// context), so that a ciphertext only unwraps with the same context.
///
/// The `seal_*`/`open_*` methods make and read whole plugin ciphertexts ([`format`]); their
/// defaults put the backend's own blob in a format-1 envelope. A layer over a backend (the local
/// KEK, [`crate::kek`]) replaces them.
pub trait KeyBackend: Send + Sync + 'static {
    /// Backend-specific identifier of a key version.
    type Version: Clone + Send + Sync + 'static;

    /// Which backend this is; recorded in every ciphertext.
    fn kind(&self) -> BackendKind;

    /// Checks the key is usable now and returns the current key_id. Called by the background
    /// health loop, never on the Status path.
    fn probe(&self) -> impl Future<Output = Result<Probe<Self::Version>, PluginError>> + Send;

    /// Wraps `plaintext` under `version`.
    fn encrypt(
        &self,
        version: &Self::Version,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> impl Future<Output = Result<Vec<u8>, PluginError>> + Send;

    /// The key_id of the key version that produced `blob` (no cryptography; a cheap parse).
    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError>;

    /// Unwraps `blob`.
    fn decrypt(
        &self,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, PluginError>> + Send;

    /// KMS v2 Encrypt: the plugin ciphertext of `plaintext` under `version`, whose key_id is
    /// `key_id`. `annotations` holds the plugin's own; a backend may add its own, which
    /// kube-apiserver stores and sends back with Decrypt. All of them are bound into the wrap.
    fn seal_v2(
        &self,
        version: &Self::Version,
        key_id: &str,
        plaintext: &[u8],
        annotations: &mut HashMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<u8>, PluginError>> + Send {
        async move {
            let blob = self.encrypt(version, plaintext, &v2_context(key_id, annotations)).await?;
            Ok(format::seal_envelope(self.kind(), &blob))
        }
    }

    /// The key_id of the key version a KMS v2 ciphertext (with its annotations) was made under:
    /// a cheap parse, no cryptography.
    fn key_id_of_v2(&self, ciphertext: &[u8], annotations: &HashMap<String, Vec<u8>>) -> Result<String, PluginError> {
        let _ = annotations;
        self.key_id_of(format::open_direct(self.kind(), ciphertext)?)
    }

    /// KMS v2 Decrypt of a ciphertext whose key_id the caller checked.
    fn open_v2(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &HashMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, PluginError>> + Send {
        async move {
            let blob = format::open_direct(self.kind(), ciphertext)?;
            self.decrypt(blob, &v2_context(key_id, annotations)).await
        }
    }

    /// KMS v1 Encrypt: the plugin ciphertext of `plaintext` under `version` (key_id `key_id`).
    fn seal_v1(
        &self,
        version: &Self::Version,
        key_id: &str,
        plaintext: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, PluginError>> + Send {
        let _ = key_id;
        async move {
            let blob = self.encrypt(version, plaintext, &v1_context()).await?;
            Ok(format::seal_envelope(self.kind(), &blob))
        }
    }

    /// KMS v1 Decrypt.
    fn open_v1(&self, ciphertext: &[u8]) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, PluginError>> + Send {
        async move {
            let blob = format::open_direct(self.kind(), ciphertext)?;
            self.decrypt(blob, &v1_context()).await
        }
    }
}

/// The embedded key store as a backend: keys live in envelope's own SQLite store under the data
/// directory, sealed by its root key.
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    store: Arc<KeyStore>,
    key: KeyRef,
}

impl EmbeddedBackend {
    /// A backend using `key` (id or alias) of `store`.
    pub fn new(store: Arc<KeyStore>, key: KeyRef) -> Self {
        Self { store, key }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }
}

/// Derives the public KMS v2 key_id of an embedded key version: a hash of the key's UUID and its
/// random material id, so it changes on every rotation and is never reused, even by a key that
/// is deleted and created again under the same alias.
pub fn embedded_key_id(key: &[u8; 16], material: &[u8; 32]) -> String {
    let d = envelope_keystore::crypto::sha256(&[b"envelope-kms-key-id-v1", key, material]);
    format!("envelope-{}", hex::encode(&d[..16]))
}

impl KeyBackend for EmbeddedBackend {
    type Version = [u8; 32];

    fn kind(&self) -> BackendKind {
        BackendKind::Embedded
    }

    async fn probe(&self) -> Result<Probe<[u8; 32]>, PluginError> {
        let store = self.store.clone();
        let key = self.key.clone();
        // SQLite is blocking I/O: keep it off the async workers.
        tokio::task::spawn_blocking(move || -> Result<Probe<[u8; 32]>, PluginError> {
            store.refresh()?;
            // The plugin wraps data keys: only a symmetric encryption key will do (a key server's
            // HMAC key in the same store is refused by name, never used as an AES key).
            let (_, _, spec, _) = store.kind(&key)?;
            if spec != envelope_keystore::KeySpec::SymmetricDefault {
                return Err(PluginError::KeyUnusable(format!(
                    "key {key} has key spec {spec}, not SYMMETRIC_DEFAULT: the plugin wraps data keys with symmetric \
                     encryption keys only"
                )));
            }
            let (kid, mid, state) = store.current(&key)?;
            match state {
                KeyState::Enabled => {}
                KeyState::Disabled => {
                    return Err(PluginError::KeyUnusable(format!("key {key} is disabled")));
                }
                other => return Err(PluginError::KeyUnusable(format!("key {key} is {other}"))),
            }
            // A real round trip proves the material unseals and works.
            let ctx = EncryptionContext::from([(envelope_keystore::context::reserved_key("probe"), "1".to_string())]);
            let e = store.encrypt_with_material(&key, &mid, b"probe", &ctx)?;
            let d = store.decrypt(&e.blob, &ctx)?;
            if &d.plaintext[..] != b"probe" {
                return Err(PluginError::Internal("probe round trip returned other bytes".into()));
            }
            Ok(Probe { key_id: embedded_key_id(&kid, &mid), version: mid })
        })
        .await
        .map_err(|e| PluginError::Internal(format!("probe task failed: {e}")))?
    }

    async fn encrypt(
        &self,
        version: &[u8; 32],
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, PluginError> {
        Ok(self.store.encrypt_with_material(&self.key, version, plaintext, ctx)?.blob)
    }

    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError> {
        let b = envelope_keystore::blob::parse(blob)?;
        Ok(embedded_key_id(&b.key_id, &b.material_id))
    }

    async fn decrypt(&self, blob: &[u8], ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        if self.store.is_cached(blob) {
            return Ok(self.store.decrypt(blob, ctx)?.plaintext);
        }
        // Unknown material: the store looks it up in SQLite (blocking), off the async workers.
        let (store, blob, ctx) = (self.store.clone(), blob.to_vec(), ctx.clone());
        tokio::task::spawn_blocking(move || store.decrypt(&blob, &ctx).map(|d| d.plaintext))
            .await
            .map_err(|e| PluginError::Internal(format!("decrypt task failed: {e}")))?
            .map_err(PluginError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key server's HMAC key in the same store is refused by name, never used as an AES key.
    #[tokio::test]
    async fn the_embedded_backend_refuses_a_key_that_is_not_symmetric() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(KeyStore::open(&dir.path().join("data")).unwrap());
        let mac = store.create_key_of(envelope_keystore::KeySpec::Hmac256, "", &[], None).unwrap();
        let key = KeyRef::parse(&mac.key_id).unwrap();
        let e = EmbeddedBackend::new(store.clone(), key.clone()).probe().await.unwrap_err();
        assert!(
            matches!(&e, PluginError::KeyUnusable(m) if m.contains("HMAC_256") && m.contains("SYMMETRIC_DEFAULT")),
            "{e}"
        );
        // Its material is never an AES key, even when asked directly.
        let mid = hex::decode(&mac.current_material_id).unwrap().try_into().unwrap();
        let e = EmbeddedBackend::new(store.clone(), key).encrypt(&mid, b"x", &EncryptionContext::new()).await;
        assert!(matches!(e, Err(PluginError::KeyUnusable(_))), "{e:?}");
        // A symmetric key of the same store still works.
        store.create_key(Some("k8s"), "").unwrap();
        EmbeddedBackend::new(store, KeyRef::parse("k8s").unwrap()).probe().await.unwrap();
    }
}
