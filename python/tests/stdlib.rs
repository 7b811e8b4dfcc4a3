//! `struct`, `re` and `statistics` in real worker processes: they give
//! what CPython gives (the expected values were checked against CPython
//! 3.11), a bad use is a Python exception recorded as the invocation's
//! error, and a regex that backtracks without end is stopped by the time
//! budget like any other runaway handler (ADR 12).

use std::path::Path;
use std::time::Duration;

use woof_python::wire::Load;
use woof_python::{Answer, Ask, Error, Limits, Outcome, Reads, Worker};

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_woof-python-worker"))
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

async fn start(source: &str) -> Worker {
    Worker::start(program(), load(source), Limits::default())
        .await
        .unwrap_or_else(|e| panic!("loading {source:?}: {e}"))
}

async fn run(worker: &mut Worker, payload: &[u8]) -> Outcome {
    worker.invoke(1, payload, &mut NoReads).await.unwrap()
}

/// The JSON the handler appended, or a panic with its error.
fn appended(outcome: &Outcome) -> serde_json::Value {
    assert_eq!(outcome.error, None, "{outcome:?}");
    serde_json::from_slice(&outcome.outputs[0].payload).unwrap()
}

/// Each function takes the payload and returns JSON text.
const FUNCTIONS: &str = r#"import struct, json, re, statistics

def handle_struct(payload):
    kind, temp, count, flag, name = struct.unpack('<Hfi?4s', payload[:15])
    (big,) = struct.unpack_from('>Q', payload, 15)
    out = {
        "unpacked": [kind, temp, count, flag, name.decode()],
        "big": big,
        "sizes": [struct.calcsize('<Hfi?4s'), struct.calcsize('Hfi?4s'), struct.calcsize('@bi'), struct.calcsize('@ib'), struct.calcsize('=l'), struct.calcsize('l')],
        "packed": struct.pack('>hHqQe', -2, 65535, -2**63, 2**64 - 1, 1.5).hex(),
        "native": struct.pack('@bi', 1, 2).hex(),
        "pascal": [struct.pack('5p', b'hello world').hex(), struct.unpack('5p', b'\x09abcd')[0].decode()],
        "chars": [struct.pack('!3sxc', b'ab', b'z').hex(), struct.unpack('c?', b'q\x02')[1]],
        "floats": list(struct.unpack('<dfe', struct.pack('<dfe', 0.1, 0.1, 0.1))),
        "iter": [list(t) for t in struct.iter_unpack('<h', b'\x01\x00\xfe\xff')],
        "memoryview": struct.unpack('>i', memoryview(b'\xff\xff\xff\xfe'))[0],
        "Struct": [struct.Struct('<hh').size, list(struct.Struct('<hh').unpack(struct.Struct('<hh').pack(-1, 2)))],
    }
    return json.dumps(out)

def handle_re(payload):
    text = payload.decode()
    m = re.match(r'(\w+)-(\d+)', text)
    named = re.search(r'(?P<user>\w+)@(?P<host>[\w.]+)', text)
    pattern = re.compile(r'^item (\d+)$', re.I | re.M)
    out = {
        "groups": list(m.groups()), "group": m.group(2), "span": list(m.span(2)),
        "findall": re.findall(r'\d+', text),
        "pairs": [list(p) for p in re.findall(r'(\w)=(\d)', 'a=1, b=2')],
        "sub": re.sub(r'(\w+)@([\w.]+)', r'\2 at \1', text),
        "subfn": re.sub(r'\d+', lambda m: str(int(m.group()) * 2), 'x1 y20'),
        "subn": list(re.subn('o', '0', 'foo boo')),
        "count": re.sub('o', '0', 'foo', 1),
        "named": named.groupdict(),
        "flags": pattern.findall('ITEM 1\nitem 2\nother 3'),
        "split": re.split(r'[,;]\s*', 'a, b;c'),
        "fullmatch": [bool(re.fullmatch(r'\d+', '123')), bool(re.fullmatch(r'\d+', '123a'))],
        "finditer": [m.start() for m in re.finditer('a', 'banana')],
        "escape": re.escape('a.b*c'),
        "bytes": re.findall(rb'[0-9]+', b'ab12cd345'),
        "expand": m.expand(r'\2/\1'),
        "flagvalue": int(re.I | re.M),
    }
    out["bytes"] = [b.decode() for b in out["bytes"]]
    return json.dumps(out)

def handle_stats(payload):
    s = statistics
    out = {
        "mean": [s.mean([1, 2, 3, 4]), s.mean([1, 2, 3]), s.mean([0.5, 0.25, 0.75])],
        "fmean": [s.fmean([3.5, 4.0, 5.25]), s.fmean([1, 2, 3], weights=[0.25, 0.25, 0.5])],
        "median": [s.median([3, 1, 2]), s.median([4, 1, 3, 2]), s.median_low([1, 3, 5, 7]), s.median_high([1, 3, 5, 7])],
        "mode": [s.mode([1, 1, 2, 3, 3, 3]), s.mode("aabbc"), s.multimode("aabbc")],
        "stdev": s.stdev([2, 4, 4, 4, 5, 5, 7, 9]),
        "pstdev": s.pstdev([2, 4, 4, 4, 5, 5, 7, 9]),
        "variance": [s.variance([2.75, 1.75, 1.25, 0.25, 0.5, 1.25, 3.5]), s.variance([1, 2, 3, 4]), s.variance([1, 3])],
        "pvariance": [s.pvariance([0.0, 0.25, 0.25, 1.25, 1.5, 1.75, 2.75, 3.25]), s.pvariance([1, 2, 3, 4])],
        "about": s.pvariance([1, 2, 3], mu=2),
    }
    return json.dumps(out)

"#;

fn handler(function: &str) -> String {
    format!(
        "{FUNCTIONS}\ndef handle(ctx, seq, payload):\n    ctx.append('out', {function}(payload))\n"
    )
}

#[tokio::test]
async fn struct_unpacks_a_binary_payload() {
    let mut payload = Vec::new();
    payload.extend(7u16.to_le_bytes());
    payload.extend(21.5f32.to_le_bytes());
    payload.extend((-3i32).to_le_bytes());
    payload.push(1);
    payload.extend(b"abcd");
    payload.extend(((1u64 << 40) + 5).to_be_bytes());
    let mut worker = start(&handler("handle_struct")).await;
    assert_eq!(
        appended(&run(&mut worker, &payload).await),
        serde_json::json!({
            "unpacked": [7, 21.5, -3, true, "abcd"], "big": 1099511627781u64,
            "sizes": [15, 17, 8, 5, 4, 8],
            "packed": "fffeffff8000000000000000ffffffffffffffff3e00",
            "native": "0100000002000000", "pascal": ["0468656c6c", "abcd"],
            "chars": ["616200007a", true],
            "floats": [0.1, 0.10000000149011612, 0.0999755859375],
            "iter": [[1], [-2]], "memoryview": -2, "Struct": [4, [-1, 2]],
        })
    );
}

#[tokio::test]
async fn re_matches_finds_and_substitutes() {
    let mut worker = start(&handler("handle_re")).await;
    for _ in 0..2 {
        // The second time, the patterns come from re's cache.
        assert_eq!(
            appended(&run(&mut worker, b"abc-123 mail bob@example.org 42").await),
            serde_json::json!({
                "groups": ["abc", "123"], "group": "123", "span": [4, 7],
                "findall": ["123", "42"], "pairs": [["a", "1"], ["b", "2"]],
                "sub": "abc-123 mail example.org at bob 42", "subfn": "x2 y40",
                "subn": ["f00 b00", 4], "count": "f0o",
                "named": {"user": "bob", "host": "example.org"}, "flags": ["1", "2"],
                "split": ["a", "b", "c"], "fullmatch": [true, false], "finditer": [1, 3, 5],
                "escape": "a\\.b\\*c", "bytes": ["12", "345"], "expand": "123/abc",
                "flagvalue": 10,
            })
        );
    }
}

#[tokio::test]
async fn statistics_means_medians_and_deviations() {
    let mut worker = start(&handler("handle_stats")).await;
    assert_eq!(
        appended(&run(&mut worker, b"").await),
        serde_json::json!({
            "mean": [2.5, 2, 0.5], "fmean": [4.25, 2.25], "median": [2, 2.5, 3, 5],
            "mode": [3, "a", ["a", "b"]], "stdev": 2.138089935299395, "pstdev": 2.0,
            "variance": [1.3720238095238095, 1.6666666666666667, 2],
            "pvariance": [1.25, 1.25], "about": 0.6666666666666666,
        })
    );
}

#[tokio::test]
async fn modules_imported_inside_handle_load_there() {
    // `re` and `statistics` are compiled on first import: here that is in
    // an invocation, under the memory cap and within the time budget.
    let mut worker = start(
        "def handle(ctx, seq, payload):\n    import re, statistics\n    ctx.append('out', re.sub('a', 'b', 'aa') + str(statistics.median([1, 5, 9])))\n",
    )
    .await;
    for _ in 0..3 {
        let outcome = run(&mut worker, b"").await;
        assert_eq!(outcome.error, None, "{outcome:?}");
        assert_eq!(outcome.outputs[0].payload, b"bb5");
    }
}

/// Each body, run as `handle`, and what its error must say.
const BAD: &[(&str, &str)] = &[
    (
        "struct.unpack('<Z', b'')",
        "struct.error: bad char in struct format",
    ),
    (
        "struct.unpack('<I', b'ab')",
        "struct.error: unpack requires a buffer of 4 bytes",
    ),
    (
        "struct.pack('<b', 300)",
        "struct.error: byte format requires -128 <= number <= 127",
    ),
    (
        "struct.pack('<H', -1)",
        "struct.error: 'H' format requires 0 <= number <= 65535",
    ),
    (
        "struct.pack('<i', 'x')",
        "struct.error: required argument is not an integer",
    ),
    (
        "struct.pack('<ii', 1)",
        "struct.error: pack expected 2 items for packing (got 1)",
    ),
    (
        "struct.calcsize('99999999999999999999999q')",
        "struct.error: total struct size too long",
    ),
    (
        "struct.unpack_from('<Q', b'abc', 2)",
        "struct.error: unpack_from requires a buffer",
    ),
    (
        "struct.iter_unpack('<H', b'abc')",
        "struct.error: iterative unpacking requires",
    ),
    (
        "re.compile('(unclosed')",
        "re.PatternError: missing ), unterminated subpattern at position 0",
    ),
    (
        "re.match('a{2,1}', 'aa')",
        "re.PatternError: min repeat greater than max repeat",
    ),
    ("re.sub('(a)', r'\\2', 'a')", "invalid group reference 2"),
    (
        "statistics.mean([])",
        "statistics.StatisticsError: mean requires at least one data point",
    ),
    (
        "statistics.stdev([1])",
        "statistics.StatisticsError: variance requires at least two data points",
    ),
    (
        "statistics.mode([])",
        "statistics.StatisticsError: no mode for empty data",
    ),
    ("import _sre", "not allowed"),
    ("import re._parser", "not allowed"),
    ("import enum", "not allowed"),
    ("from . import re", "relative imports are not available"),
];

#[tokio::test]
async fn bad_uses_are_python_exceptions_and_the_worker_lives_on() {
    for (body, says) in BAD {
        let source = format!(
            "import struct, re, statistics\ndef handle(ctx, seq, payload):\n    if payload == b'ok':\n        ctx.append('out', 'fine')\n        return\n    {body}\n"
        );
        let mut worker = start(&source).await;
        let outcome = run(&mut worker, b"").await;
        let error = outcome
            .error
            .unwrap_or_else(|| panic!("{body}: it did not fail"));
        assert!(outcome.outputs.is_empty(), "{body}");
        assert!(
            error.contains(says),
            "{body}: {error:?} does not say {says:?}"
        );
        // The same worker goes on.
        let outcome = run(&mut worker, b"ok").await;
        assert_eq!(outcome.error, None, "after {body}");
        assert_eq!(outcome.outputs[0].payload, b"fine", "after {body}");
    }

    // And a handler can catch them as their classes.
    let mut worker = start(
        "import struct, re, statistics\ndef handle(ctx, seq, payload):\n    caught = []\n    for f in (lambda: struct.unpack('<Z', b''), lambda: re.compile('('), lambda: statistics.mean([])):\n        try:\n            f()\n        except (struct.error, re.error, statistics.StatisticsError) as e:\n            caught.append(type(e).__name__)\n    ctx.append('out', ','.join(caught))\n",
    )
    .await;
    let outcome = run(&mut worker, b"").await;
    assert_eq!(outcome.error, None, "{outcome:?}");
    assert_eq!(
        String::from_utf8_lossy(&outcome.outputs[0].payload),
        "error,PatternError,StatisticsError"
    );
}

#[tokio::test]
async fn catastrophic_backtracking_is_stopped_by_the_time_budget() {
    let limits = Limits {
        time: Duration::from_millis(500),
        memory_bytes: 64 << 20,
    };
    let source = "import re\ndef handle(ctx, seq, payload):\n    if re.match('(a+)+$', payload.decode()):\n        ctx.append('out', 'matched')\n";
    let mut worker = Worker::start(program(), load(source), limits)
        .await
        .unwrap();
    // A small input answers at once...
    let outcome = worker.invoke(1, b"aaaa", &mut NoReads).await.unwrap();
    assert_eq!(outcome.outputs[0].payload, b"matched");
    // ...one that backtracks for ever (2^40 ways to split the a's) does not.
    let mut evil = "a".repeat(40).into_bytes();
    evil.push(b'b');
    let started = std::time::Instant::now();
    match worker.invoke(2, &evil, &mut NoReads).await {
        Err(Error::Overran(ms)) => assert_eq!(ms, 500),
        other => panic!("not stopped: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The worker is spent; a new one runs the same handler again.
    let mut worker = Worker::start(program(), load(source), limits)
        .await
        .unwrap();
    let outcome = worker.invoke(3, b"aa", &mut NoReads).await.unwrap();
    assert_eq!(outcome.outputs[0].payload, b"matched");
}
