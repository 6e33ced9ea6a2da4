//! Aliases: create, re-point (optionally only from an expected key), delete, list.

use super::{AliasInfo, KeyStore, normalise_alias, now, snapshot};
use crate::error::Result;
use crate::model::KeyRef;

impl KeyStore {
    /// Points a new alias at an existing key. The key must not be pending deletion.
    pub fn create_alias(&self, alias: &str, target: &KeyRef) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let (_, id) = self.resolve_db(target)?;
        self.core.db.create_alias(&alias, &id, now())?;
        self.refresh()
    }

    /// Points an existing alias at another key. The new key must not be pending deletion.
    ///
    /// With `expected`, the alias must still point at that key when the change commits
    /// ([`crate::Error::Changed`] otherwise): a caller authorized on the alias's current key
    /// cannot move an alias that someone else re-pointed in between.
    pub fn update_alias(&self, alias: &str, target: &KeyRef, expected: Option<&KeyRef>) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let (_, id) = self.resolve_db(target)?;
        let expected = self.expected_id(expected)?;
        self.core.db.update_alias(&alias, &id, expected.as_deref(), now())?;
        self.refresh()
    }

    /// Deletes an alias. The key it pointed at is not affected. With `expected`, the alias must
    /// still point at that key ([`crate::Error::Changed`] otherwise).
    pub fn delete_alias(&self, alias: &str, expected: Option<&KeyRef>) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let expected = self.expected_id(expected)?;
        self.core.db.delete_alias(&alias, expected.as_deref())?;
        self.refresh()
    }

    /// Lists all aliases, ordered by name, read from the database.
    pub fn list_aliases(&self) -> Result<Vec<AliasInfo>> {
        self.core.db.list_aliases()
    }

    fn expected_id(&self, expected: Option<&KeyRef>) -> Result<Option<String>> {
        expected
            .map(|e| snapshot::resolve(&self.core.snapshot(), e).map(|kid| uuid::Uuid::from_bytes(kid).to_string()))
            .transpose()
    }
}
