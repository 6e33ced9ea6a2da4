//! A [`KeyBackend`](envelope_plugin::KeyBackend) of the envelope KMS plugin whose master key is
//! an AES-256 key inside a PKCS#11 token (an HSM, or SoftHSM2), used through the `cryptoki`
//! crate (which loads the module with `dlopen` and holds all the FFI).
//!
//! * [`blob`]: the backend's ciphertext layout, its additional data and the key_id derivation
//!   (pure; the parser never panics).
//! * [`pin`]: the user PIN, read from a file that only its owner may read; a PIN the token refused
//!   is never presented again (no retries into a lockout).
//! * [`module`]: one loaded module per path and process, initialised once; re-initialised after
//!   a token went away (SoftHSM2 and many HSMs only see a re-inserted token after that).
//! * [`classify`]: the one mapping of PKCS#11 return values to what the pool does (reopen,
//!   log in again, re-initialise, fail) and to [`PluginError`](envelope_plugin::PluginError).
//! * [`pool`]: the logged-in session pool: blocking calls on the blocking pool, bounded retries
//!   inside the caller's deadline, the token found by label or serial.
//! * [`keys`]: which object is the current key (labels are not unique: the highest generation
//!   in CKA_ID), key creation and rotation inside the token, listing, enable/disable.
//! * [`backend`]: [`Pkcs11Backend`] itself.
//! * [`root`]: a key store's root key wrapped by a token key ([`Pkcs11RootWrapper`], named by an
//!   RFC 7512 `pkcs11:` URI).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod blob;
pub mod classify;
pub mod keys;
pub mod module;
pub mod pin;
pub mod pool;
pub mod root;

pub use backend::{Pkcs11Backend, Pkcs11KeyVersion};
pub use blob::pkcs11_key_id;
pub use keys::{KeyInfo, Token};
pub use pool::{Pkcs11Config, RetryPolicy, TokenSelector};
pub use root::{Pkcs11RootWrapper, Pkcs11Uri};
