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
//! 1 a second (the aim: 5,000); 1,000 devices at 5 a second. Figures: readings
//! acknowledged a second, and the device-side time from a reading's first
//! send to its ack (p50, p99). A case fails if any reading is refused or
//! not acknowledged.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::nodes::{self, Cluster};
use crate::report::{Report, probe_machine};

/// (devices, readings a second each, loss) per case.
/// Each case registers its own fleet: together at most the cluster's
/// 10,000 devices.
const CASES: [(u32, u32, f64); 4] = [
    (200, 5, 0.1),
    (1000, 1, 0.0),
    (5000, 1, 0.0),
    (1000, 5, 0.0),
];

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
    for (i, (devices, rate, loss)) in CASES.into_iter().enumerate() {
        let cases = if quick { &CASES[..2] } else { &CASES[..] };
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
        let case = format!(
            "{devices} devices x {rate}/s{}",
            if loss > 0.0 {
                format!(", {:.0}% loss", loss * 100.0)
            } else {
                String::new()
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
        if f("acked") < f("readings") || f("refused") > 0.0 {
            report.failures.push(format!(
                "{case}: {} of {} readings acknowledged, {} refused",
                f("acked"),
                f("readings"),
                f("refused")
            ));
        }
    }
    report.notes.push(format!(
        "one gateway (node 0) of a 3-node cluster on loopback; each case {secs} s of readings, \
         then the last answers; the simulated devices share the machine's cores with the nodes"
    ));
    Ok(report)
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
