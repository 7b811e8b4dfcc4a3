//! The C port builds where it should and not where it should not: with
//! every warning the tests know as an error, at the smallest sizes, its
//! header from C++ (an Arduino sketch is C++), and sizes out of bounds
//! refused at compile time.

use std::path::PathBuf;
use std::process::Command;

use woof_mcu_c_test::*;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("builds");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles the core to an object with `extra` flags.
fn object(name: &str, extra: &[&str]) -> Result<(), String> {
    let mut flags = vec!["-c"];
    flags.extend(extra);
    compile(&dir().join(name), &[c_dir().join("woof_bridge.c")], &flags)
}

#[test]
fn the_core_builds_with_every_warning_at_any_size() {
    let strict = [
        "-Wshadow",
        "-Wconversion",
        "-Wsign-conversion",
        "-Wcast-qual",
        "-Wstrict-prototypes",
        "-Wmissing-prototypes",
        "-Wundef",
        "-Os",
    ];
    object("strict.o", &strict).unwrap();
    let mut smallest = strict.to_vec();
    smallest.extend([
        "-DWOOF_OUTBOX=1",
        "-DWOOF_FRAME_MAX=20",
        "-DWOOF_DEFRAME_MAX=1",
    ]);
    object("smallest.o", &smallest).unwrap();
    let mut largest = strict.to_vec();
    largest.extend([
        "-DWOOF_OUTBOX=64",
        "-DWOOF_FRAME_MAX=1024",
        "-DWOOF_DEFRAME_MAX=1025",
    ]);
    object("largest.o", &largest).unwrap();
    for bad in [
        ["-DWOOF_OUTBOX=0", "-DWOOF_FRAME_MAX=128"],
        ["-DWOOF_OUTBOX=65", "-DWOOF_FRAME_MAX=128"],
        ["-DWOOF_OUTBOX=8", "-DWOOF_FRAME_MAX=19"],
        ["-DWOOF_OUTBOX=8", "-DWOOF_FRAME_MAX=1025"],
        ["-DWOOF_OUTBOX=8", "-DWOOF_DEFRAME_MAX=0"],
        ["-DWOOF_OUTBOX=8", "-DWOOF_DEFRAME_MAX=1026"],
    ] {
        assert!(object("bad.o", &bad).is_err(), "{bad:?} compiled");
    }
}

#[test]
fn the_header_compiles_as_cpp() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = dir().join("sketch.cc");
    std::fs::write(
        &src,
        "#include \"woof_bridge.h\"\n\
         static woof_session s;\n\
         static woof_deframer d;\n\
         static woof_chooser ch;\n\
         static uint8_t w[WOOF_SLIP_LEN_MAX(WOOF_TX_MAX)];\n\
         static void on_frame(void *, uint8_t *f, size_t n) { woof_handle_input(&s, 0, f, n, 0); }\n\
         int main() {\n\
           woof_config c = {};\n\
           c.device_id = \"soil-1\";\n\
           c.ping_interval_ms = WOOF_PING_INTERVAL_MS;\n\
           woof_event ev;\n\
           uint8_t b = WOOF_SLIP_END;\n\
           woof_deframer_init(&d);\n\
           woof_chooser_init(&ch);\n\
           woof_chooser_record(&ch, woof_chooser_pick(&ch), 5);\n\
           return woof_init(&s, &c, 0, 1) + woof_poll_event(&s, 0, &ev)\n\
             + (int)woof_deframer_push(&d, b) + (int)woof_deframer_feed(&d, &b, 1, on_frame, 0)\n\
             + woof_slip_encode(&b, 1, w, sizeof w);\n\
         }\n",
    )
    .unwrap();
    let out = match Command::new(&cxx)
        .args([
            "-std=c++11",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-c",
            "-I",
        ])
        .arg(c_dir())
        .arg(&src)
        .arg("-o")
        .arg(dir().join("sketch.o"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("no C++ compiler ({cxx}: {e}): not checked");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sizes_and_texts_as_compiled() {
    // Session<8, 128> is 8 slots and under 400 bytes more in Rust (the
    // key, ids, the replay windows of this session and the last four,
    // counters: see session.rs); the C session stores about as much.
    let size = CDevice::session_size();
    assert!(
        (8 * 128..=8 * (128 + 40) + 400).contains(&size),
        "woof_session is {size} bytes"
    );
    assert_eq!(c_strerror(-13), "outbox full");
    assert_eq!(c_strerror(-8), "authentication tag did not verify");
    assert_eq!(c_strerror(-99), "unknown error");
    for code in -15..=-1 {
        assert_ne!(c_strerror(code), "unknown error", "{code}");
    }
}
