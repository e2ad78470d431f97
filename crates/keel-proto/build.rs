//! Compiles the `.proto` files with protox (pure Rust), so that building keel
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in ["proto/keel.proto", "proto/etcd_kv.proto"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(["keel.proto", "etcd_kv.proto"], ["proto"])?;
    // Every service decodes through `codec::LimitedCodec` (a bound on the
    // records a message may carry, checked before decoding).
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::LimitedCodec")
        .compile_fds(fds)?;
    Ok(())
}
