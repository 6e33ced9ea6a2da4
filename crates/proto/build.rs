//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

#[path = "src/files.rs"]
mod files;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/files.rs");
    for f in files::PROTO_FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files::PROTO_FILES, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Kubernetes marshals map entries sorted by key; BTreeMap reproduces that byte for byte.
        .btree_map(".k8s")
        .compile_fds(fds)?;
    Ok(())
}
