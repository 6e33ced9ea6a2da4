//! Key identifiers (spec §2): key id (UUID), key ARN, alias name, alias ARN.

use envelope_keystore::KeyRef;

use crate::error::{KmsError, Result};

/// A random (version 4) UUID for a request id or an audit event id. The bytes come from aws-lc's
/// generator (seeded and reseeded by the operating system), drawn 64 ids at a time into a
/// per-thread pool: a call to the generator costs far more than the bytes it returns.
pub fn random_uuid() -> String {
    const POOL: usize = 16 * 64;
    thread_local! {
        static RANDOM: std::cell::RefCell<([u8; POOL], usize)> = const { std::cell::RefCell::new(([0; POOL], POOL)) };
    }
    let bytes = RANDOM.with_borrow_mut(|(pool, used)| {
        if *used + 16 > POOL {
            aws_lc_rs::rand::fill(&mut pool[..]).ok()?;
            *used = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(pool.get(*used..*used + 16)?);
        *used += 16;
        Some(b)
    });
    match bytes {
        Some(b) => uuid::Builder::from_random_bytes(b).into_uuid().to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// ARN construction and parsing for one partition, region and account.
#[derive(Debug, Clone)]
pub struct Names {
    partition: &'static str,
    region: String,
    account: String,
}

/// Which identifier forms an operation accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forms {
    /// Key id, key ARN, alias name or alias ARN (cryptographic operations, DescribeKey).
    Any,
    /// Key id or key ARN only (operations that manage a key).
    KeyOnly,
}

impl Names {
    /// Names in partition `aws` for `region` and `account`.
    pub fn new(region: &str, account: &str) -> Self {
        Self { partition: "aws", region: region.to_string(), account: account.to_string() }
    }

    /// `arn:aws:kms:<region>:<account>:key/<id>`.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!("arn:{}:kms:{}:{}:key/{key_id}", self.partition, self.region, self.account)
    }

    /// `arn:aws:kms:<region>:<account>:alias/<name>` for an alias `alias/<name>`.
    pub fn alias_arn(&self, alias: &str) -> String {
        format!("arn:{}:kms:{}:{}:{alias}", self.partition, self.region, self.account)
    }

    /// The key store reference for an identifier given by a client.
    pub fn resolve(&self, s: &str, forms: Forms) -> Result<KeyRef> {
        if let Some(rest) = s.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = parts[..] else {
                return Err(KmsError::InvalidArn(format!("{s} is not a valid ARN.")));
            };
            if service != "kms" || partition.is_empty() || region.is_empty() || account.is_empty() {
                return Err(KmsError::InvalidArn(format!("{s} is not a valid KMS ARN.")));
            }
            let local = partition == self.partition && region == self.region && account == self.account;
            if let Some(id) = resource.strip_prefix("key/") {
                if region != self.region {
                    // AWS's wording for a key ARN of another region.
                    return Err(KmsError::NotFound(format!("Invalid arn {region}")));
                }
                if is_multi_region_id(id) {
                    return Err(KmsError::NotFound(format!("Key '{s}' does not exist")));
                }
                let u = uuid::Uuid::parse_str(id).map_err(|_| self.invalid_key_id(s))?;
                if !local {
                    return Err(KmsError::NotFound(format!("Key '{s}' does not exist")));
                }
                return Ok(KeyRef::Id(u));
            }
            if resource.starts_with("alias/") && forms == Forms::Any {
                if !local {
                    return Err(KmsError::NotFound(format!("Alias {s} is not found.")));
                }
                return self.alias(resource);
            }
            return Err(self.invalid_key_id(s));
        }
        if s.starts_with("alias/") {
            return if forms == Forms::Any { self.alias(s) } else { Err(self.invalid_key_id(s)) };
        }
        if is_multi_region_id(s) {
            // This server has no multi-Region keys: such an id names a key that does not exist.
            return Err(KmsError::NotFound(format!("Key '{}' does not exist", self.key_arn(s))));
        }
        match uuid::Uuid::parse_str(s) {
            // Only the hyphenated form is a key id (the uuid crate also takes simple/braced/urn forms).
            Ok(u) if s.len() == 36 => Ok(KeyRef::Id(u)),
            _ => Err(self.invalid_key_id(s)),
        }
    }

    /// The NotFound error for a reference, in AWS's wording.
    pub fn not_found(&self, r: &KeyRef) -> KmsError {
        match r {
            KeyRef::Id(u) => KmsError::NotFound(format!("Key '{}' does not exist", self.key_arn(&u.to_string()))),
            KeyRef::Alias(a) => KmsError::NotFound(format!("Alias {} is not found.", self.alias_arn(a))),
        }
    }

    /// The ARN-ish label of a reference for messages.
    pub fn label(&self, r: &KeyRef) -> String {
        match r {
            KeyRef::Id(u) => self.key_arn(&u.to_string()),
            KeyRef::Alias(a) => self.alias_arn(a),
        }
    }

    fn alias(&self, a: &str) -> Result<KeyRef> {
        match KeyRef::parse(a) {
            Ok(r @ KeyRef::Alias(_)) => Ok(r),
            _ => Err(KmsError::NotFound(format!("Alias {} is not found.", self.alias_arn(a)))),
        }
    }

    fn invalid_key_id(&self, s: &str) -> KmsError {
        KmsError::NotFound(format!("Invalid keyId '{s}'"))
    }
}

/// A multi-Region key id: `mrk-` and 32 lowercase hex digits.
fn is_multi_region_id(s: &str) -> bool {
    s.strip_prefix("mrk-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_v4_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| random_uuid()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn every_form() {
        let n = Names::new("us-east-1", "111122223333");
        let u = uuid::Uuid::parse_str(ID).unwrap();
        assert_eq!(n.resolve(ID, Forms::Any).unwrap(), KeyRef::Id(u));
        assert_eq!(n.resolve(&n.key_arn(ID), Forms::KeyOnly).unwrap(), KeyRef::Id(u));
        assert_eq!(n.resolve("alias/k8s", Forms::Any).unwrap(), KeyRef::Alias("alias/k8s".into()));
        assert_eq!(n.resolve(&n.alias_arn("alias/k8s"), Forms::Any).unwrap(), KeyRef::Alias("alias/k8s".into()));
        assert_eq!(n.key_arn(ID), format!("arn:aws:kms:us-east-1:111122223333:key/{ID}"));
    }

    #[test]
    fn rejections() {
        let n = Names::new("us-east-1", "111122223333");
        let code = |s: &str, f| n.resolve(s, f).unwrap_err().aws().0;
        assert_eq!(code("alias/k8s", Forms::KeyOnly), "NotFoundException");
        assert_eq!(code("k8s", Forms::Any), "NotFoundException");
        assert_eq!(code("1234abcd12ab34cd56ef1234567890ab", Forms::Any), "NotFoundException");
        assert_eq!(code(&format!("arn:aws:kms:eu-west-1:111122223333:key/{ID}"), Forms::Any), "NotFoundException");
        assert_eq!(code(&format!("arn:aws:kms:us-east-1:999999999999:key/{ID}"), Forms::Any), "NotFoundException");
        assert_eq!(code("arn:aws:s3:::bucket/x", Forms::Any), "InvalidArnException");
        assert_eq!(code("arn:aws", Forms::Any), "InvalidArnException");
        assert_eq!(code("arn:aws:kms:us-east-1:111122223333:alias/x", Forms::KeyOnly), "NotFoundException");
        assert_eq!(code("alias/aws/reserved", Forms::Any), "NotFoundException");
        let msg = |s: &str| n.resolve(s, Forms::Any).unwrap_err().to_string();
        assert_eq!(msg(&format!("arn:aws:kms:eu-west-1:111122223333:key/{ID}")), "Invalid arn eu-west-1");
        let mrk = "mrk-1234abcd12ab34cd56ef1234567890ab";
        assert_eq!(msg(mrk), format!("Key '{}' does not exist", n.key_arn(mrk)));
        assert_eq!(msg(&n.key_arn(mrk)), format!("Key '{}' does not exist", n.key_arn(mrk)));
        assert_eq!(msg("not-a-key"), "Invalid keyId 'not-a-key'");
    }
}
