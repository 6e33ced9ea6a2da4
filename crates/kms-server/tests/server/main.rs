//! The key server's API against a real server on 127.0.0.1:0 (envelope_test_support::kms):
//! requests signed with `aws-sigv4` (the SDKs' signer) and sent over plain TCP as HTTP/1.1 or
//! HTTP/2. One test binary, one module per area:
//!
//! * `keys`: identifiers and lookups, listing, tags
//! * `aliases`: the alias operations and their rules
//! * `crypto`: Encrypt/Decrypt/ReEncrypt, data keys, random bytes, contexts, tampering
//! * `lifecycle`: deletion, descriptions, rotation over time
//! * `policies`: key policies and the lockout safety check
//! * `byok`: importing key material
//! * `protocol::http`, `protocol::sigv4`: the wire: AWS-shaped errors, HTTP/2, authentication
//! * `limits`: timeouts, the connection limit, slow and silent clients, shutdown
//!
//! Authorization attacks are in tests/authorization.rs, the audit log in tests/audit.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod aliases;
mod byok;
mod crypto;
mod keys;
mod lifecycle;
mod limits;
mod policies;
mod protocol;
