//! The one list of `.proto` files: compiled by build.rs (which mounts this module with `#[path]`)
//! and exported as [`PROTO_FILES`].

/// The `.proto` files this crate compiles, relative to the crate root. The encoded file
/// descriptor set is not exported; the `.proto` files are the source of truth.
pub const PROTO_FILES: &[&str] = &[
    "proto/kms_v2.proto",
    "proto/encrypted_object.proto",
    "proto/kms_v1beta1.proto",
    "proto/k8s.proto",
    "proto/mvccpb.proto",
    "proto/etcd.proto",
];
