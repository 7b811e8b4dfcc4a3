//! Python handlers in real worker processes: what they can do, and what
//! hostile ones cannot (ADR 12).

use std::path::Path;
use std::time::{Duration, Instant};

use woof_python::wire::{Element, Load};
use woof_python::{Answer, Ask, Error, Limits, Outcome, Reads, Worker};

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_woof-python-worker"))
}

fn load(source: &str) -> Load {
    Load {
        source: source.to_string(),
        config: r#"{"to": "out", "factor": 2}"#.to_string(),
        topic: "in".to_string(),
        node: "n1".to_string(),
        memory_bytes: 0,
    }
}

/// Answers reads from a small fixed topic `t` holding elements 1..=3.
struct Fixed;

impl Reads for Fixed {
    async fn answer(&mut self, ask: Ask) -> Answer {
        let element = |seq: u64| Element {
            seq,
            payload: format!("e{seq}").into_bytes(),
        };
        match ask {
            Ask::Get { topic, seq } if topic == "t" => {
                Answer::Element((1..=3).contains(&seq).then(|| element(seq)))
            }
            Ask::Latest { topic } if topic == "t" => Answer::Element(Some(element(3))),
            Ask::Scan { topic, from, limit } if topic == "t" => Answer::Elements(
                (from.max(1)..=3)
                    .take(limit as usize)
                    .map(element)
                    .collect(),
            ),
            other => Answer::Failed(format!("no topic in {other:?}")),
        }
    }
}

async fn start(source: &str) -> Worker {
    Worker::start(program(), load(source), Limits::default())
        .await
        .unwrap_or_else(|e| panic!("loading {source:?}: {e}"))
}

async fn run(worker: &mut Worker, seq: u64, payload: &[u8]) -> Outcome {
    worker.invoke(seq, payload, &mut Fixed).await.unwrap()
}

const DOUBLE: &str = r#"
import json

def handle(ctx, seq, payload):
    n = json.loads(payload)
    ctx.append(ctx.config["to"], json.dumps(n * ctx.config["factor"]))
"#;

#[tokio::test]
async fn a_handler_appends_through_ctx_and_stays_warm() {
    let mut worker = start(DOUBLE).await;
    for seq in 1..=200u64 {
        let outcome = run(&mut worker, seq, seq.to_string().as_bytes()).await;
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.outputs.len(), 1);
        assert_eq!(outcome.outputs[0].topic, "out");
        assert_eq!(outcome.outputs[0].payload, (2 * seq).to_string().as_bytes());
    }
    // Module state lives on between invocations: the worker is warm.
    let mut counter = start(
        "count = 0\ndef handle(ctx, seq, payload):\n    global count\n    count += 1\n    ctx.append('c', str(count))\n",
    )
    .await;
    for expected in 1..=3 {
        let outcome = run(&mut counter, expected, b"").await;
        assert_eq!(outcome.outputs[0].payload, expected.to_string().as_bytes());
    }
}

#[tokio::test]
async fn reads_logs_and_the_allowed_modules_work() {
    let source = r#"
import json, math, time, itertools, functools
from collections import deque, defaultdict, Counter

def handle(ctx, seq, payload):
    print("printed", seq)
    ctx.log("ctx", ctx.topic, ctx.node)
    got = ctx.get("t", 2)
    missing = ctx.get("t", 9)
    newest = ctx.latest("t")
    page = ctx.scan("t", 2, 10)
    d = deque([1, 2, 3], maxlen=2)
    dd = defaultdict(list)
    dd["a"].append(1)
    c = Counter("abca")
    out = {
        "got": got.decode(), "missing": missing, "newest": [newest[0], newest[1].decode()],
        "page": [s for s, _ in page], "sqrt": math.sqrt(16), "floor": math.floor(2.7),
        "deque": list(d), "dd": dd["a"], "common": c.most_common(1)[0][0],
        "sum": functools.reduce(lambda a, b: a + b, itertools.islice(range(10), 4)),
        "time": time.time() > 1e9,
    }
    ctx.append("out", json.dumps(out))
"#;
    let mut worker = start(source).await;
    let outcome = run(&mut worker, 7, b"{}").await;
    assert_eq!(outcome.error, None);
    let out: serde_json::Value = serde_json::from_slice(&outcome.outputs[0].payload).unwrap();
    assert_eq!(
        out,
        serde_json::json!({
            "got": "e2", "missing": null, "newest": [3, "e3"], "page": [2, 3], "sqrt": 4.0,
            "floor": 2, "deque": [2, 3], "dd": [1], "common": "a", "sum": 6, "time": true,
        })
    );
    assert_eq!(outcome.logs, vec!["printed 7", "ctx in n1"]);

    // A read of a topic that fails is an exception the handler can catch.
    let mut worker = start(
        "def handle(ctx, seq, payload):\n    try:\n        ctx.get('nope', 1)\n    except RuntimeError as e:\n        ctx.append('out', str(e))\n",
    )
    .await;
    let outcome = run(&mut worker, 1, b"").await;
    assert!(
        String::from_utf8_lossy(&outcome.outputs[0].payload).contains("no topic"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn bad_source_is_refused_with_its_line() {
    let refused = |e: Error| match e {
        Error::Refused(r) => r,
        other => panic!("not refused: {other}"),
    };
    let syntax = Worker::start(
        program(),
        load("import json\n\ndef handle(ctx, seq, payload)\n    pass\n"),
        Limits::default(),
    )
    .await
    .err()
    .map(refused)
    .expect("a syntax error is refused");
    assert_eq!(syntax.line, Some(3), "{syntax:?}");

    let no_handle = Worker::start(program(), load("x = 1\n"), Limits::default())
        .await
        .err()
        .map(refused)
        .expect("a module without handle is refused");
    assert!(no_handle.message.contains("handle"), "{no_handle:?}");

    let raises = Worker::start(program(), load("import os\n"), Limits::default())
        .await
        .err()
        .map(refused)
        .expect("a module that raises is refused");
    assert!(raises.message.contains("not allowed"), "{raises:?}");

    let loops = Worker::start(
        program(),
        load("while True:\n    pass\n"),
        Limits::default(),
    )
    .await
    .err()
    .expect("a module that never finishes loading is refused");
    assert!(matches!(loops, Error::Overran(_)), "{loops}");
}

/// Each hostile body, run as `handle`, and what its failure must say (one
/// of the `|`-separated phrases: a huge power is stopped by whichever
/// limit it reaches first).
const HOSTILE: &[(&str, &str)] = &[
    ("open('/etc/passwd').read()", "NameError"),
    ("import os", "not allowed"),
    ("import socket", "not allowed"),
    ("__import__('subprocess')", "not allowed"),
    ("import sys", "not allowed"),
    ("raise ValueError('no')", "ValueError: no"),
    ("return 42", "must return None"),
    ("ctx.append('out', 42)", "bytes or str"),
    (
        "def f(n):\n        return f(n + 1)\n    f(0)",
        "RecursionError",
    ),
    ("while True:\n        pass", "time budget"),
    // Catastrophic backtracking: one native call into the regex engine.
    (
        "import re\n    re.match('(a+)+$', 'a' * 40 + 'b')",
        "time budget",
    ),
    ("10**10**8", "time budget|memory cap"),
    ("x = [0] * 10**9", "memory"),
    ("x = b'x' * 10**10", "memory"),
];

#[tokio::test]
async fn hostile_handlers_fail_alone_and_a_new_worker_runs_at_full_speed() {
    let limits = Limits {
        time: Duration::from_millis(500),
        memory_bytes: 64 << 20,
    };
    let mut good = Worker::start(program(), load(DOUBLE), limits)
        .await
        .unwrap();
    let timing = async |good: &mut Worker| {
        let started = Instant::now();
        for seq in 1..=300u64 {
            let outcome = good.invoke(seq, b"21", &mut Fixed).await.unwrap();
            assert_eq!(outcome.outputs[0].payload, b"42");
        }
        started.elapsed()
    };
    let before = timing(&mut good).await;
    for (body, says) in HOSTILE {
        let source = format!("def handle(ctx, seq, payload):\n    {body}\n");
        let mut bad = Worker::start(program(), load(&source), limits)
            .await
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        let said = match bad.invoke(1, b"", &mut Fixed).await {
            Ok(Outcome {
                error: Some(error),
                outputs,
                ..
            }) => {
                assert!(
                    outputs.is_empty(),
                    "{body}: a failed invocation appends nothing"
                );
                error
            }
            Ok(outcome) => panic!("{body}: it did not fail: {outcome:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            says.split('|')
                .any(|says| said.to_lowercase().contains(&says.to_lowercase())),
            "{body}: {said:?} does not say {says:?}"
        );
        eprintln!("{body}: {}", said.lines().last().unwrap_or(""));
        // Whatever it did, the good handler still answers.
        let outcome = good.invoke(1, b"1", &mut Fixed).await.unwrap();
        assert_eq!(outcome.outputs[0].payload, b"2", "after {body}");
    }
    let after = timing(&mut good).await;
    // Noise allowed, not a slowdown: each hostile worker is gone.
    assert!(
        after < before * 3 + Duration::from_millis(50),
        "300 invocations took {before:?} before the hostile handlers and {after:?} after"
    );
}
