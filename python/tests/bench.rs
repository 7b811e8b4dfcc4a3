//! What a worker costs: its start (with a handler loaded) and a warm
//! invocation. Not a test of correctness: run it to see the numbers,
//! `cargo test -p woof-python --test bench -- --ignored --nocapture`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use woof_python::wire::Load;
use woof_python::{Answer, Ask, Limits, Reads, Worker};

/// This crate's worker, or the one `WOOF_BENCH_WORKER` names (to compare
/// two builds with the same measurement).
fn program() -> PathBuf {
    std::env::var_os("WOOF_BENCH_WORKER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_woof-python-worker")))
}

fn load(source: &str) -> Load {
    Load {
        source: source.to_string(),
        config: "{}".to_string(),
        topic: "in".to_string(),
        node: "n1".to_string(),
        memory_bytes: 64 << 20,
    }
}

struct NoReads;

impl Reads for NoReads {
    async fn answer(&mut self, _ask: Ask) -> Answer {
        Answer::Failed("no reads here".to_string())
    }
}

const DOUBLE: &str = "import json\ndef handle(ctx, seq, payload):\n    ctx.append('out', json.dumps(json.loads(payload) * 2))\n";

/// The mean start (to loaded) over `starts` workers, and the mean warm
/// invocation over `calls` invocations of the last one.
async fn measure(source: &str, starts: u32, calls: u32) -> (Duration, Duration) {
    let mut started = Duration::ZERO;
    let mut worker = None;
    for _ in 0..starts {
        let t = Instant::now();
        worker = Some(
            Worker::start(&program(), load(source), Limits::default())
                .await
                .unwrap(),
        );
        started += t.elapsed();
    }
    let mut worker = worker.unwrap();
    // The first call may do what a warm one does not.
    let first = worker.invoke(0, b"21", &mut NoReads).await.unwrap();
    assert_eq!(first.error, None);
    let t = Instant::now();
    for seq in 1..=calls {
        let outcome = worker
            .invoke(seq.into(), b"21", &mut NoReads)
            .await
            .unwrap();
        assert_eq!(outcome.error, None);
    }
    (started / starts, t.elapsed() / calls)
}

#[tokio::test]
#[ignore = "a measurement; run it with --ignored --nocapture"]
async fn warm_invocation_cost() {
    let (start, warm) = measure(DOUBLE, 20, 10000).await;
    eprintln!("json handler: start {start:?}, warm invocation {warm:?}");
    if std::env::var_os("WOOF_BENCH_WORKER").is_some() {
        return;
    }
    let (start, warm) = measure(RE, 20, 2000).await;
    eprintln!("re handler: start {start:?}, warm invocation {warm:?}");
    let (start, warm) = measure(STATISTICS, 20, 2000).await;
    eprintln!("statistics handler: start {start:?}, warm invocation {warm:?}");
    let (start, warm) = measure(STRUCT, 20, 2000).await;
    eprintln!("struct handler: start {start:?}, warm invocation {warm:?}");
}

/// `re` is compiled when the module imports it, at the worker's start.
const RE: &str = "import re\ndef handle(ctx, seq, payload):\n    ctx.append('out', re.match(r'(\\d+)', payload.decode()).group(1))\n";
const STATISTICS: &str = "import statistics\ndef handle(ctx, seq, payload):\n    ctx.append('out', str(statistics.mean([int(payload), 1, 2])))\n";
const STRUCT: &str = "import struct\ndef handle(ctx, seq, payload):\n    ctx.append('out', struct.pack('<q', int(payload)))\n";
