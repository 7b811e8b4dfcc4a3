//! Compiles the C port (`../c/woof_bridge.c`) into this crate, with the
//! outbox sizes the tests compare against (`Session<8, 128>`, and
//! `Deframer<66>`: see `src/lib.rs`) and every warning an error.

fn main() {
    println!("cargo:rerun-if-changed=../c/woof_bridge.c");
    println!("cargo:rerun-if-changed=../c/woof_bridge.h");
    cc::Build::new()
        .file("../c/woof_bridge.c")
        .include("../c")
        .std("c99")
        .define("WOOF_OUTBOX", "8")
        .define("WOOF_FRAME_MAX", "128")
        .define("WOOF_DEFRAME_MAX", "66")
        .flag("-pedantic")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Wshadow")
        .flag("-Wconversion")
        .warnings_into_errors(true)
        .compile("woof_bridge");
}
