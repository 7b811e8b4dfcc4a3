//! The C port of the device core (`mcu-bridge/c`) against a real woof
//! node: `mcu-bridge/c/examples/udp_device.c`, built with the system C
//! compiler, appends readings through the node's bridge gateway, and the
//! topic then holds exactly those readings, once each, in order, at the
//! element numbers the device was told. A second run (a reboot: a new boot
//! id, sequence numbers from 1 again) adds to them, written once more each.
//! Then the C device and the Rust core (`woof device sim`) append through
//! the same gateway at the same time, each once per reading, in order.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `udp_device`, built into `dir` with the strict flags.
fn build_udp_device(dir: &Path) -> PathBuf {
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mcu-bridge/c");
    let bin = dir.join("udp_device");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args([
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-I",
        ])
        .arg(&c)
        .arg(c.join("examples/udp_device.c"))
        .arg(c.join("woof_bridge.c"))
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        out.status.success(),
        "building udp_device: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Runs the device for `count` readings; its summary line.
fn run_device(bin: &Path, port: u16, key: &str, count: u32) -> serde_json::Value {
    let out = Command::new(bin)
        .args([
            "127.0.0.1",
            &port.to_string(),
            "c-dev-1",
            key,
            "farm/c",
            &count.to_string(),
            "20",
        ])
        .env("UDP_DEVICE_IDLE_MS", "30000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "udp_device: {stdout} {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
}

/// `woof --json scan farm/c`: (seq, payload) of every element.
fn scan(url: &str) -> Vec<(u64, serde_json::Value)> {
    let out = woof(&[
        "--server", url, "--json", "scan", "farm/c", "--limit", "1000",
    ]);
    assert!(
        out.status.success(),
        "scan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let payload = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            (v["seq"].as_u64().unwrap(), payload)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_device_appends_through_the_gateway_once_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_udp_device(dir.path());
    let key = keygen(dir.path());
    let port = free_udp_port();
    let bridge = format!("udp://127.0.0.1:{port}");
    let node = start_node(&dir.path().join("n0"), &key, &["--bridge-listen", &bridge]);
    wait_alive(&[&node.url], 1);
    let mut client = connect(&node.url).await;
    create_replicated(&mut client, "farm/c", 1, "").await;
    let device_key =
        woof_node::devices::registry::key_hex(&add_device(&node.url, "c-dev-1", "farm/c", &[]));

    let first = run_device(&bin, port, &device_key, 50);
    assert_eq!(first["sent"], 50);
    assert_eq!(first["acked"], 50, "{first}");
    let seqs: Vec<u64> = first["topic_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());

    // A reboot: numbering starts again, and nothing is taken for a repeat.
    let second = run_device(&bin, port, &device_key, 10);
    assert_eq!(second["acked"], 10, "{second}");
    let seqs: Vec<u64> = second["topic_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (51..=60).collect::<Vec<u64>>());

    let held = scan(&node.url);
    let want: Vec<(u64, serde_json::Value)> = (0..50)
        .chain(0..10)
        .enumerate()
        .map(|(i, n)| {
            (
                i as u64 + 1,
                serde_json::json!({"device": "c-dev-1", "n": n}),
            )
        })
        .collect();
    assert_eq!(held, want);

    // The C port and the Rust core at once, through the same gateway.
    let rust_key =
        woof_node::devices::registry::key_hex(&add_device(&node.url, "rust-dev-1", "farm/c", &[]));
    let gateway = format!("udp://127.0.0.1:{port}");
    let rust = std::thread::spawn(move || {
        woof(&[
            "--json",
            "device",
            "sim",
            "--gateway",
            &gateway,
            "--id",
            "rust-dev-1",
            "--key",
            &rust_key,
            "--topic",
            "farm/c",
            "--rate",
            "20/s",
            "--count",
            "40",
        ])
    });
    let c = run_device(&bin, port, &device_key, 40);
    let rust = rust.join().unwrap();
    assert!(
        rust.status.success(),
        "device sim: {}",
        String::from_utf8_lossy(&rust.stdout)
    );
    assert_eq!(c["acked"], 40, "{c}");
    let held = scan(&node.url);
    for device in ["c-dev-1", "rust-dev-1"] {
        let ns: Vec<u64> = held[60..]
            .iter()
            .filter(|(_, v)| v["device"] == device)
            .map(|(_, v)| v["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..40).collect::<Vec<u64>>(), "{device}'s readings");
    }
    assert_eq!(held.len(), 140, "nothing else, nothing twice");
}
