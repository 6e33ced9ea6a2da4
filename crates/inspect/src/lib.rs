//! Pure decoding of what kube-apiserver stores in etcd: classify every value by the provider
//! that wrote it, decrypt it given unwrapped key material, and decode the Kubernetes object
//! inside. No network, no async; the etcd client and the KMS plugin calls live in the caller.
//!
//! * [`classify`](mod@classify): [`classify()`] a `(etcd key, value)` pair into a [`Classified`] — identity
//!   (protobuf/JSON), static key (aescbc/aesgcm/secretbox + key name), KMS v1 (provider, wrapped
//!   DEK), KMS v2 (provider, key_id, DEK source type, annotations), unknown prefix,
//!   unrecognised, or corrupt with a reason. Never fails, never panics.
//! * [`decrypt`]: plaintext from a value plus key material: [`decrypt::kms_v2`] (the unwrapped
//!   seed/DEK from the plugin's Decrypt), [`decrypt::kms_v1`] (GCM, CBC fallback),
//!   [`decrypt::static_key`] / [`decrypt::with_config`]. AAD = the etcd key.
//! * [`config`]: a strict [`EncryptionConfig`] reader (static keys, KMS providers).
//! * [`object`]: [`decode_object`] turns a plaintext into kubectl-style JSON plus an
//!   [`ObjectSummary`] (kind, namespace, name, data keys).
//! * [`writer`]: the inverse — values byte-for-byte as kube-apiserver writes them, for tests
//!   and benchmarks.
//! * [`input`]: values an operator saved to a file (`etcdctl get --print-value-only`): which
//!   bytes to try (etcdctl's trailing newline) and what to say when they are not a value.
//! * [`report`]: per-object rows and running counts for an inspection report (pure).
//! * [`error`]: the crate's one [`Error`].
//!
//! Typical use by an inspection tool:
//!
//! ```
//! use envelope_inspect::{classify, decode_object, Classified, writer};
//!
//! # fn main() -> Result<(), envelope_inspect::Error> {
//! let key = b"/registry/secrets/default/db";
//! // A value as kube-apiserver writes it (here made with the writer and a known seed).
//! let seed = [7u8; 32];
//! let meta = writer::new_object_meta("default", "db", "uid-1", 1_700_000_000);
//! let secret = writer::new_secret(meta, [("password".to_owned(), b"hunter2".to_vec())].into(), "Opaque");
//! let envelope = writer::KmsV2Envelope {
//!     provider_name: "our-kms".into(),
//!     key_id: "key-1".into(),
//!     encrypted_dek_source: b"wrapped-by-plugin".to_vec(),
//!     annotations: Default::default(),
//! };
//! let value = writer::kms_v2_seed(key, &writer::encode_secret(&secret), &seed, &envelope)?;
//!
//! match classify(key, &value) {
//!     Classified::KmsV2(v) => {
//!         assert_eq!(v.key_id, "key-1");
//!         // ... ask the plugin to Decrypt(v.encrypted_dek_source, v.key_id, v.annotations) ...
//!         let plaintext = envelope_inspect::decrypt::kms_v2(key, &value, &seed)?;
//!         let object = decode_object(&plaintext)?;
//!         assert_eq!(object.summary().name, "db");
//!         assert_eq!(object.json()["data"]["password"], "aHVudGVyMg==");
//!     }
//!     other => panic!("unexpected {other}"),
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
pub mod config;
pub mod decrypt;
pub mod error;
pub mod input;
pub mod object;
pub mod report;
pub mod writer;

pub use classify::{
    Classified, CorruptValue, DekSourceType, KmsV1Value, KmsV2Value, ProviderKind, StaticKeyValue, StaticProvider,
    classify, classify_with_config, classify_with_names,
};
pub use config::{EncryptionConfig, KmsApiVersion, KmsProvider, Provider, ResourceRule, StaticKey};
pub use error::{Error, Result};
pub use object::{DecodedObject, ObjectEncoding, ObjectSummary, decode_object};
