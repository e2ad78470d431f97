//! Compiles the `.proto` files with protox (pure Rust), so that building keel
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in ["proto/keel.proto", "proto/etcd_kv.proto"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(["keel.proto", "etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
