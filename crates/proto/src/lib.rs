//! Generated protobuf and gRPC types, and the KMS v2 rules on them.
//!
//! * [`v2`]: the KMS v2 plugin API (`/v2.KeyManagementService/*`) and the apiserver's
//!   `EncryptedObject` storage message (same protobuf package `v2`).
//! * [`v1beta1`]: the deprecated KMS v1 plugin API (`/v1beta1.KeyManagementService/*`).
//! * [`k8s`]: the Kubernetes object messages stored in etcd (`runtime.Unknown`, `ObjectMeta`,
//!   `Secret`, `ConfigMap`), proto2, maps as `BTreeMap` (sorted, like kube-apiserver writes them).
//! * [`etcdserverpb`] and [`mvccpb`]: etcd's v3 KV API (`/etcdserverpb.KV/{Range,Put,DeleteRange}`),
//!   trimmed, with etcd's package names and field numbers.
//! * [`rules`]: kube-apiserver's KMS v2 limits and annotation-key rule (hand-written, not
//!   generated).
//!
//! The `.proto` sources are in `proto/`; they are compiled at build time with protox.
#![forbid(unsafe_code)]

pub mod rules;

/// KMS v2 plugin API and the `EncryptedObject` stored in etcd.
#[allow(missing_docs, clippy::all)]
pub mod v2 {
    tonic::include_proto!("v2");
}

/// KMS v1beta1 plugin API.
#[allow(missing_docs, clippy::all)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// Kubernetes object messages (proto2; optional fields are `Option<..>`).
#[allow(missing_docs, clippy::all)]
pub mod k8s {
    tonic::include_proto!("k8s");
}

/// etcd v3 KV API: the `KV` service client (`etcdserverpb::kv_client::KvClient`) and its messages.
#[allow(missing_docs, clippy::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's stored key-value pair.
#[allow(missing_docs, clippy::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

mod files;
pub use files::PROTO_FILES;
