//! Compiles `proto/woof/v1/woof.proto` with protox (pure Rust, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["woof/v1/woof.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payloads as `bytes::Bytes`: no copy from the wire to storage and back.
        .bytes(".")
        .compile_fds(files)?;
    Ok(())
}
