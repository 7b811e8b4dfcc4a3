//! Compiles `proto/woof/v1/woof.proto` with protox (pure Rust, no `protoc`),
//! and writes its encoded `FileDescriptorSet` to `OUT_DIR/woof_descriptor.bin`
//! for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["woof/v1/woof.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("woof_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payloads as `bytes::Bytes`: no copy from the wire to storage and back.
        .bytes(".")
        .compile_fds(files)?;
    Ok(())
}
