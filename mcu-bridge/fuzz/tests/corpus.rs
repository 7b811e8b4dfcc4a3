//! The corpus and the seeds, replayed through every target under plain
//! `cargo test` (no libFuzzer, no instrumentation): each input that once
//! found something stays a regression test.

use std::path::Path;

use woof_mcu_bridge_fuzz::{device, frame, gateway, replay_dir, seeds};

fn corpus(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn seeds_pass() {
    for (name, data) in seeds::frame() {
        println!("frame {name}");
        frame::run(&data);
    }
    for (name, data) in seeds::device() {
        println!("device {name}");
        device::run(&data);
    }
    for (name, data) in seeds::gateway() {
        println!("gateway {name}");
        gateway::run(&data);
    }
}

#[test]
fn frame_corpus_replays() {
    assert!(replay_dir(&corpus("frame"), frame::run) > 0);
}

#[test]
fn device_corpus_replays() {
    assert!(replay_dir(&corpus("device"), device::run) > 0);
}

#[test]
fn gateway_corpus_replays() {
    assert!(replay_dir(&corpus("gateway"), gateway::run) > 0);
}
