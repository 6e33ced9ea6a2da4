//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kms_v2.proto",
        "proto/encrypted_object.proto",
        "proto/kms_v1beta1.proto",
        "proto/k8s.proto",
        "proto/mvccpb.proto",
        "proto/etcd.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Kubernetes marshals map entries sorted by key; BTreeMap reproduces that byte for byte.
        .btree_map(".k8s")
        .compile_fds(fds)?;
    Ok(())
}
