//! `devices`: microcontrollers through one bridge gateway of a 3-node
//! cluster.
//!
//! Node 0 serves the bridge protocol (`--bridge-listen`); a fleet is
//! registered (`woof device add probe --fleet N`) and `woof device sim
//! --devices N` runs the devices (the `no_std` core with eight 128-byte
//! outbox slots each, every device its own UDP socket) in one process on
//! the same machine. Every device sends its readings to one topic with 3
//! replicas, one in flight at a time (ADR 17), each acknowledged only once
//! committed on a majority. Cases: 200 devices at 5 readings a second over
//! links that lose 10% of the frames each way; 1,000 and 5,000 devices at
//! 1 a second (the issue's aim: 5,000); 1,000 devices at 5 a second; and
//! 1,000 devices at 1 a second again while one address floods the gateway
//! with forged hellos and garbage as fast as one thread sends them, 100,000
//! frames from 5 s into the run (the issue's flood), and then without end
//! (the honest devices' figures beside the same case without a flood); and
//! 100 devices at 10 calls a second choosing between a local run (20 ms
//! dearer than the host's) and an offloaded call to a native handler.
//! Figures: readings
//! acknowledged a second, and the device-side time from a reading's first
//! send to its ack (p50, p99). A case fails if any reading is refused or
//! not acknowledged.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::nodes::{self, Cluster};
use crate::report::{Report, probe_machine};

/// (devices, readings a second each, loss, flood) per case.
/// Each case registers its own fleet: together at most the cluster's
/// 10,000 devices.
const CASES: [(u32, u32, f64, Flooding); 6] = [
    (200, 5, 0.1, Flooding::No),
    (1000, 1, 0.0, Flooding::No),
    (1000, 1, 0.0, Flooding::Frames(100_000)),
    (1000, 1, 0.0, Flooding::Endless),
    (5000, 1, 0.0, Flooding::No),
    (1000, 5, 0.0, Flooding::No),
];

/// Whether one address floods the gateway during a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flooding {
    No,
    /// This many frames, from 5 s into the case.
    Frames(u64),
    /// For the whole case.
    Endless,
}

pub async fn run(woof: &Path, quick: bool) -> anyhow::Result<Report> {
    let secs: u64 = if quick { 5 } else { 20 };
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?.port()
    };
    let gateway = format!("udp://127.0.0.1:{port}");
    let cluster = Cluster::start_with(woof, 3, None, |i| {
        if i == 0 {
            vec!["--bridge-listen".into(), gateway.clone().into()]
        } else {
            Vec::new()
        }
    })
    .await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    let url = cluster.url(0).to_string();
    for (i, (devices, rate, loss, flooded)) in CASES.into_iter().enumerate() {
        let cases = if quick { &CASES[..3] } else { &CASES[..] };
        if i >= cases.len() {
            break;
        }
        let topic = format!("fleet/f{i}");
        nodes::create(&url, &topic, 3).await?;
        let id = format!("f{i}");
        let out = woof_cli(
            woof,
            &[
                "--server",
                &url,
                "--json",
                "device",
                "add",
                &id,
                "--topics",
                &topic,
                "--fleet",
                &devices.to_string(),
            ],
        )?;
        let key = serde_json::from_str::<serde_json::Value>(&out)?["key"]
            .as_str()
            .context("no fleet key")?
            .to_string();
        let count = secs * u64::from(rate);
        let flood = match flooded {
            Flooding::No => None,
            Flooding::Frames(n) => Some(Flood::start(port, &format!("{id}-1"), Some(n))),
            Flooding::Endless => Some(Flood::start(port, &format!("{id}-1"), None)),
        };
        let summary = woof_cli(
            woof,
            &[
                "--json",
                "device",
                "sim",
                "--gateway",
                &gateway,
                "--id",
                &id,
                "--key",
                &key,
                "--topic",
                &topic,
                "--rate",
                &format!("{rate}/s"),
                "--count",
                &count.to_string(),
                "--loss",
                &loss.to_string(),
                "--devices",
                &devices.to_string(),
                "--drain",
                "60",
            ],
        );
        let flood = flood.map(Flood::stop);
        let case = format!(
            "{devices} devices x {rate}/s{}{}",
            if loss > 0.0 {
                format!(", {:.0}% loss", loss * 100.0)
            } else {
                String::new()
            },
            match flooded {
                Flooding::No => String::new(),
                Flooding::Frames(n) => format!(", {n} frames from one address"),
                Flooding::Endless => ", one address flooding without end".into(),
            }
        );
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                report.failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_str(summary.trim())
            .with_context(|| format!("the simulator's summary: {summary}"))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        report.row(&case, "offered", f64::from(devices * rate), "per s");
        report.row(&case, "acknowledged", f("acked_per_sec"), "per s");
        report.row(&case, "send to ack p50", f("ack_p50_ms"), "ms");
        report.row(&case, "send to ack p99", f("ack_p99_ms"), "ms");
        report.row(&case, "retransmitted", f("retransmitted"), "frames");
        if let Some((frames, secs)) = flood {
            report.row(&case, "flood", frames as f64, "frames");
            report.row(&case, "flood rate", frames as f64 / secs, "frames per s");
        }
        if f("acked") < f("readings") || f("refused") > 0.0 {
            report.failures.push(format!(
                "{case}: {} of {} readings acknowledged, {} refused",
                f("acked"),
                f("readings"),
                f("refused")
            ));
        }
    }
    if let Err(e) = offload(woof, &url, &gateway, secs, &mut report).await {
        report.failures.push(format!("offload: {e}"));
    }
    report.notes.push(format!(
        "one gateway (node 0) of a 3-node cluster on loopback; each case {secs} s of readings, \
         then the last answers; the simulated devices share the machine's cores with the nodes"
    ));
    Ok(report)
}

/// Devices invoking a function each tick, on themselves or offloaded to
/// the gateway (a native handler), by measured time to result: a device
/// run costs 20 ms more than the host's (a slow microcontroller), so the
/// gateway should take most calls. Every remote result is checked against
/// the local one by the simulator.
async fn offload(
    woof: &Path,
    url: &str,
    gateway: &str,
    secs: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    const DEVICES: u32 = 100;
    const RATE: u32 = 10;
    let topic = "fleet/offload";
    let config = r#"{"to":"fleet/stats","field":"n","count":8}"#;
    nodes::create(url, topic, 3).await?;
    woof_cli(
        woof,
        &[
            "--server", url, "handler", "deploy", topic, "stats", "--native", "window", "--config",
            config,
        ],
    )?;
    let out = woof_cli(
        woof,
        &[
            "--server",
            url,
            "--json",
            "device",
            "add",
            "calls",
            "--topics",
            topic,
            "--fleet",
            &DEVICES.to_string(),
        ],
    )?;
    let key = serde_json::from_str::<serde_json::Value>(&out)?["key"]
        .as_str()
        .context("no fleet key")?
        .to_string();
    let summary = woof_cli(
        woof,
        &[
            "--json",
            "device",
            "sim",
            "--gateway",
            gateway,
            "--id",
            "calls",
            "--key",
            &key,
            "--topic",
            topic,
            "--rate",
            &format!("{RATE}/s"),
            "--count",
            &(secs * u64::from(RATE)).to_string(),
            "--devices",
            &DEVICES.to_string(),
            "--drain",
            "60",
            "--offload",
            "stats",
            "--local",
            "window",
            "--local-config",
            config,
            "--local-cost-ms",
            "20",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(summary.trim())
        .with_context(|| format!("the simulator's summary: {summary}"))?;
    let o = &v["offload"];
    let f = |k: &str| o[k].as_f64().unwrap_or(0.0);
    let case = format!("{DEVICES} devices x {RATE}/s offloading (a local run costs 20 ms)");
    let elapsed = v["elapsed_ms"].as_f64().unwrap_or(1.0) / 1000.0;
    report.row(&case, "offloaded", f("remote") / elapsed, "per s");
    report.row(&case, "run locally", f("local") / elapsed, "per s");
    report.row(&case, "offloaded call p50", f("remote_p50_ms"), "ms");
    report.row(&case, "local run p50", f("local_p50_ms"), "ms");
    if f("mismatched") > 0.0 || f("failed") > 0.0 {
        report.failures.push(format!(
            "{case}: {} results differed from local, {} calls failed",
            f("mismatched"),
            f("failed")
        ));
    }
    Ok(())
}

/// One address sending the gateway forged hellos (a registered device's
/// id under a wrong key) and garbage, as fast as one thread can.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Frames sent, and the seconds spent sending them.
    thread: std::thread::JoinHandle<(u64, f64)>,
}

impl Flood {
    /// `frames` of them from 5 s on, or without end from now.
    fn start(port: u16, device: &str, frames: Option<u64>) -> Flood {
        use woof_mcu_bridge::session::{Config, Session};
        let mut hello = [0u8; 128];
        let mut forged = Session::<1, 128>::new(
            &Config {
                device_id: device.as_bytes(),
                key: [0x5a; 16],
                boot_id: 1,
                caps: 0,
                ping_interval_ms: 30_000,
            },
            0,
            1,
        )
        .expect("a forged session");
        let n = forged
            .poll_transmit(0, &mut hello)
            .ok()
            .flatten()
            .expect("a hello");
        let hello = hello[..n].to_vec();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a flood socket");
            let garbage = [0xffu8; 64];
            let mut sent = 0u64;
            if frames.is_some() {
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
            let started = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed)
                && frames.is_none_or(|n| sent < n)
            {
                let frame: &[u8] = if sent.is_multiple_of(2) {
                    &hello
                } else {
                    &garbage
                };
                if socket.send_to(frame, ("127.0.0.1", port)).is_ok() {
                    sent += 1;
                }
            }
            (sent, started.elapsed().as_secs_f64().max(1e-3))
        });
        Flood { stop, thread }
    }

    /// Frames sent, and over how many seconds.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 1.0))
    }
}

/// Runs the `woof` CLI; its standard output, or why it failed.
fn woof_cli(woof: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(woof)
        .args(args)
        .output()
        .with_context(|| format!("woof {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "woof {}: {}{}",
            args.first().copied().unwrap_or_default(),
            stdout.lines().last().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The summary is the last line (the first says what runs).
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}
