//! The example device program (`mcu-bridge/c/examples/udp_device.c`),
//! compiled with the system C compiler and run against a gateway session
//! behind a real UDP socket on loopback that loses frames both ways: every
//! reading acknowledged, written once and in order, and the summary line
//! says so.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use woof_mcu_bridge::gateway::{self, Input, TopicRef};
use woof_mcu_c_test::*;

const ID: &str = "c-dev-1";
const KEY: [u8; 16] = *b"0123456789abcdef";
const KEY_HEX: &str = "30313233343536373839616263646566";

/// The example, built once per test run with the strict flags.
fn udp_device() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("udp_device");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("udp_device");
        let sources = [
            c_dir().join("examples/udp_device.c"),
            c_dir().join("woof_bridge.c"),
        ];
        compile(&bin, &sources, &["-O2"]).unwrap_or_else(|e| panic!("{e}"));
        bin
    })
}

/// What the gateway saw: the payloads in commit order, and its drops.
struct Seen {
    log: Vec<Vec<u8>>,
    forged: u32,
}

/// A gateway for `ID` with `key` on a loopback port, committing every
/// append at once (to topic "farm/soil" only), dropping `loss` per mille of
/// the frames each way; runs until `stop`.
fn gateway(key: [u8; 16], loss: u64, stop: Arc<AtomicBool>) -> (u16, JoinHandle<Seen>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        // A window of one, as the node gives: readings commit in order.
        let mut gw = gateway::Session::new(ID.as_bytes(), key, 1);
        let mut rng = Rng(7);
        let mut log = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if rng.chance(loss) {
                continue;
            }
            if let Ok(Some(input)) = gw.handle_input(&buf[..n], rng.u32() | 1) {
                let Input::Append {
                    boot_id,
                    device_seq,
                    topic,
                    payload,
                } = input
                else {
                    panic!("{input:?}")
                };
                if topic == TopicRef::Name("farm/soil".into()) {
                    log.push(payload);
                    gw.committed(boot_id, device_seq, log.len() as u64).unwrap();
                } else {
                    gw.refuse(boot_id, device_seq, 2, "topic not allowed")
                        .unwrap();
                }
            }
            while let Some(out) = gw.poll_transmit() {
                if !rng.chance(loss) {
                    socket.send_to(&out, peer).unwrap();
                }
            }
        }
        Seen {
            log,
            forged: gw.drops().forged,
        }
    });
    (port, handle)
}

fn device(port: u16, key_hex: &str, topic: &str, count: u32, idle_ms: &str) -> Output {
    Command::new(udp_device())
        .args([
            "127.0.0.1",
            &port.to_string(),
            ID,
            key_hex,
            topic,
            &count.to_string(),
            "50",
        ])
        .env("UDP_DEVICE_IDLE_MS", idle_ms)
        .output()
        .unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "summary {text:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_example_device_gets_every_reading_acked_once_in_order_over_loss() {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, gw) = gateway(KEY, 100, stop.clone());
    let out = device(port, KEY_HEX, "farm/soil", 40, "30000");
    stop.store(true, Ordering::Relaxed);
    let seen = gw.join().unwrap();
    let s = summary(&out);
    assert!(
        out.status.success(),
        "{s}; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["sent"], 40);
    assert_eq!(s["acked"], 40);
    assert_eq!(s["gave_up"], 0);
    let topic_seqs: Vec<u64> = s["topic_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(topic_seqs, (1..=40).collect::<Vec<u64>>());
    assert!(s["retransmitted"].as_u64().unwrap() > 0, "10% loss: {s}");
    let want: Vec<Vec<u8>> = (0..40)
        .map(|n| format!(r#"{{"device":"{ID}","n":{n}}}"#).into_bytes())
        .collect();
    assert_eq!(seen.log, want, "written once each, in order");
}

#[test]
fn the_example_device_fails_when_refused_or_unheard() {
    // A topic the gateway refuses: given an answer, not acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let (port, gw) = gateway(KEY, 0, stop.clone());
    let out = device(port, KEY_HEX, "not/mine", 3, "30000");
    stop.store(true, Ordering::Relaxed);
    assert!(gw.join().unwrap().log.is_empty());
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(
        (s["acked"].as_u64(), s["rejected"].as_u64()),
        (Some(0), Some(3))
    );

    // The wrong key: the gateway drops the hellos as forged, the device
    // hears nothing and stops after its idle limit.
    let stop = Arc::new(AtomicBool::new(false));
    let (port, gw) = gateway(*b"another-key-0000", 0, stop.clone());
    let out = device(port, KEY_HEX, "farm/soil", 3, "2500");
    stop.store(true, Ordering::Relaxed);
    let seen = gw.join().unwrap();
    assert!(seen.log.is_empty() && seen.forged >= 1);
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(s["acked"], 0);
    assert_eq!(s["topic_seqs"], serde_json::json!([null, null, null]));

    // Bad arguments.
    let out = device(port, "not-hex", "farm/soil", 3, "100");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(udp_device()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
