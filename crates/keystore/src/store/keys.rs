//! Key mutations: create, rotate, enable/disable, deletion, description, automatic rotation,
//! tags and policies. Each is one database transaction followed by a refresh.

use super::engine::{NewKey, NewVersion};
use super::{KeyStore, normalise_alias, now, parse_key_id, seal_aad_for};
use crate::crypto::{fill_random, random_material};
use crate::error::{Error, Result};
use crate::model::{KeyMetadata, KeyRef, KeySpec, KeyUsage, RotationType};

impl KeyStore {
    /// Creates a key with fresh random material, optionally with an alias. Durable on return.
    pub fn create_key(&self, alias: Option<&str>, description: &str) -> Result<KeyMetadata> {
        self.create_key_with(alias, description, &[], None)
    }

    /// [`KeyStore::create_key`] with initial tags and a key policy, all in one transaction.
    pub fn create_key_with(
        &self,
        alias: Option<&str>,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(alias, description, tags, policy, false, (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt))
    }

    /// [`KeyStore::create_key_with`] for a key of any spec (HMAC keys: material as long as the
    /// spec's digest, sealed bound to the spec). Its usage is the spec's default.
    pub fn create_key_of(
        &self,
        spec: KeySpec,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(None, description, tags, policy, false, (spec, spec.usage()))
    }

    /// [`KeyStore::create_key_of`] with a usage of the spec's ([`KeySpec::usages`]; RSA keys
    /// for `ENCRYPT_DECRYPT`, NIST ECC keys for `KEY_AGREEMENT`): [`Error::Invalid`] for another.
    pub fn create_key_for(
        &self,
        spec: KeySpec,
        usage: KeyUsage,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(None, description, tags, policy, false, (spec, usage))
    }

    /// Creates a key for imported material (origin `EXTERNAL`): no material, state
    /// [`crate::KeyState::PendingImport`] until [`KeyStore::import_material`].
    pub fn create_external_key(
        &self,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(None, description, tags, policy, true, (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt))
    }

    /// [`KeyStore::create_external_key`] for a key of any spec and one of its usages: HMAC keys
    /// and key pairs take their material from [`KeyStore::import_material_with`] too.
    pub fn create_external_key_for(
        &self,
        spec: KeySpec,
        usage: KeyUsage,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(None, description, tags, policy, true, (spec, usage))
    }

    fn create(
        &self,
        alias: Option<&str>,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
        external: bool,
        (key_spec, key_usage): (KeySpec, KeyUsage),
    ) -> Result<KeyMetadata> {
        if !key_spec.usages().contains(&key_usage) {
            return Err(Error::Invalid(format!("a {key_spec} key cannot have key usage {key_usage}")));
        }
        let alias = alias.map(normalise_alias).transpose()?;
        let kid = *uuid::Uuid::new_v4().as_bytes();
        let id = uuid::Uuid::from_bytes(kid).to_string();
        let version = if external { None } else { Some(self.new_material(&kid, key_spec, key_usage)?) };
        self.core.db.create_key(&NewKey {
            key_id: &id,
            description,
            created_at: now(),
            alias: alias.as_deref(),
            version,
            tags,
            policy,
            max_keys: self.limits().max_keys,
            key_spec,
            key_usage,
        })?;
        self.refresh()?;
        self.describe(&KeyRef::Id(uuid::Uuid::from_bytes(kid)))
    }

    /// Adds a new material version and makes it current. Older versions stay for decryption.
    pub fn rotate(&self, key: &KeyRef) -> Result<KeyMetadata> {
        self.rotate_as(key, RotationType::OnDemand, now())
    }

    /// [`KeyStore::rotate`] recording how (`kind`) and when (`at`, Unix seconds) it happened.
    /// Only symmetric encryption keys rotate ([`Error::Unsupported`] for the others, as AWS).
    pub fn rotate_as(&self, key: &KeyRef, kind: RotationType, at: i64) -> Result<KeyMetadata> {
        let (kid, id) = self.resolve_db(key)?;
        let spec = self.spec_of(&kid);
        if spec != KeySpec::SymmetricDefault {
            return Err(Error::Unsupported(format!(
                "key {id} has key spec {spec}: only symmetric encryption keys rotate"
            )));
        }
        let v = self.new_material(&kid, spec, KeyUsage::EncryptDecrypt)?;
        let max = if kind == RotationType::OnDemand { self.limits().max_on_demand_rotations } else { None };
        self.core.db.rotate(&id, &v, kind, at, max)?;
        self.refresh()?;
        self.describe(key)
    }

    /// Enables or disables a key. A key pending deletion cannot be changed this way.
    pub fn set_enabled(&self, key: &KeyRef, enabled: bool) -> Result<KeyMetadata> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.set_enabled(&id, enabled)?;
        self.refresh()?;
        self.describe(key)
    }

    /// Schedules deletion of a key (Enabled or Disabled) at `deletion_date` (Unix seconds):
    /// the key becomes PendingDeletion and unusable until [`KeyStore::cancel_deletion`], and
    /// [`KeyStore::purge_deleted`] deletes it once the date has passed.
    pub fn schedule_deletion(&self, key: &KeyRef, deletion_date: i64, window_days: u32) -> Result<KeyMetadata> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.schedule_deletion(&id, deletion_date, window_days)?;
        self.refresh()?;
        self.describe(key)
    }

    /// Cancels a scheduled deletion; the key becomes Disabled (as in AWS KMS).
    pub fn cancel_deletion(&self, key: &KeyRef) -> Result<KeyMetadata> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.cancel_deletion(&id)?;
        self.refresh()?;
        self.describe(key)
    }

    /// Deletes every key pending deletion whose deletion date is at or before `now` (Unix
    /// seconds): its material versions, aliases, tags and policy go with it, irrecoverably.
    /// Returns the deleted key ids.
    pub fn purge_deleted(&self, now: i64) -> Result<Vec<String>> {
        let ids = self.core.db.purge_deleted(now)?;
        if !ids.is_empty() {
            self.refresh()?;
        }
        Ok(ids)
    }

    /// Replaces a key's description. Not for keys pending deletion.
    pub fn set_description(&self, key: &KeyRef, description: &str) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.set_description(&id, description)?;
        self.refresh()
    }

    /// Turns automatic rotation on (`Some((period_days, next_rotation))`) or off (`None`).
    pub fn set_rotation(&self, key: &KeyRef, schedule: Option<(u32, i64)>) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.set_rotation(&id, schedule)?;
        self.refresh()
    }

    /// Rotates every Enabled key whose automatic rotation is due at `now` (Unix seconds) and
    /// schedules its next rotation one period later. Returns the rotated key ids.
    pub fn rotate_due(&self, now: i64) -> Result<Vec<String>> {
        let due = self.core.db.due_rotations(now)?;
        let mut done = Vec::new();
        for (id, period) in due {
            let kid = parse_key_id(&id)?;
            // Rotation is never enabled on other keys; if a row says so, it is not acted on.
            if self.spec_of(&kid) != KeySpec::SymmetricDefault {
                continue;
            }
            let v = self.new_material(&kid, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt)?;
            let next = now.saturating_add(period.saturating_mul(86_400));
            if self.core.db.rotate_automatic(&id, &v, now, next)? {
                done.push(id);
            }
        }
        if !done.is_empty() {
            self.refresh()?;
        }
        Ok(done)
    }

    /// Adds or replaces tags of a key. Not for keys pending deletion.
    pub fn tag(&self, key: &KeyRef, tags: &[(String, String)]) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.tag(&id, tags, self.limits().max_tags)?;
        self.refresh()
    }

    /// Removes tags of a key by tag key (absent keys are ignored). Not for keys pending deletion.
    pub fn untag(&self, key: &KeyRef, tag_keys: &[String]) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.untag(&id, tag_keys)?;
        self.refresh()
    }

    /// Replaces the key policy (name `default`). The document is stored as given.
    pub fn put_policy(&self, key: &KeyRef, policy: &str) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.put_policy(&id, policy)?;
        self.refresh()
    }

    /// Fresh random material for key `kid` of `spec` and `usage`, sealed under the root key
    /// (bound to both), with a fresh random id.
    fn new_material(&self, kid: &[u8; 16], spec: KeySpec, usage: KeyUsage) -> Result<NewVersion> {
        let mut mid = [0u8; 32];
        fill_random(&mut mid)?;
        let material = match (spec.material_len(), spec.is_signing()) {
            (_, true) => crate::crypto::SigningKey::generate_pkcs8(spec)?,
            (Some(len), false) => random_material(len)?,
            (None, false) => return Err(Error::Unsupported(format!("keys of spec {spec} cannot be made"))),
        };
        let sealed = self.core.root.seal(&seal_aad_for(spec, usage, kid, &mid), &material[..])?;
        Ok(NewVersion { material_id: hex::encode(mid), sealed })
    }

    /// The key's spec in the snapshot (symmetric if the key is not there).
    fn spec_of(&self, kid: &[u8; 16]) -> KeySpec {
        self.core.snapshot().keys.get(kid).map(|k| k.key_spec).unwrap_or_default()
    }
}
