//! Generated protobuf and gRPC types.
//!
//! * [`v2`]: the KMS v2 plugin API (`/v2.KeyManagementService/*`) and the apiserver's
//!   `EncryptedObject` storage message (same protobuf package `v2`).
//! * [`v1beta1`]: the deprecated KMS v1 plugin API (`/v1beta1.KeyManagementService/*`).
//!
//! The `.proto` sources are in `proto/`; they are compiled at build time with protox.
#![allow(missing_docs, clippy::all)]

/// KMS v2 plugin API and the `EncryptedObject` stored in etcd.
pub mod v2 {
    tonic::include_proto!("v2");
}

/// KMS v1beta1 plugin API.
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// Encoded file descriptor set is not exported; the `.proto` files are the source of truth.
pub const PROTO_FILES: &[&str] = &[
    "proto/kms_v2.proto",
    "proto/encrypted_object.proto",
    "proto/kms_v1beta1.proto",
];
