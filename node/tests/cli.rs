//! The `woof` command line against a real node process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Runs `woof --server URL ARGS`; returns (success, stdout, stderr).
fn woof(url: &str, args: &[&str]) -> (bool, String, String) {
    woof_with_stdin(url, args, None)
}

fn woof_with_stdin(url: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(woof_bin())
        .arg("--server")
        .arg(url)
        .args(args)
        .env_remove("WOOF_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(url: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = woof(url, args);
    assert!(success, "woof {args:?} failed: {stderr}");
    stdout
}

/// A failing command: non-zero exit and exactly one line on stderr.
fn fails(url: &str, args: &[&str]) -> String {
    let (success, _, stderr) = woof(url, args);
    assert!(!success, "woof {args:?} should fail");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    stderr
}

#[test]
fn topic_append_read_commands() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_in(dir.path());
    let url = node.url.as_str();

    assert!(
        ok(url, &["topic", "create", "farm/soil", "--history", "50"])
            .contains("created topic farm/soil")
    );
    assert!(ok(url, &["topic", "list"]).contains("farm/soil"));
    assert_eq!(ok(url, &["append", "farm/soil", "21.5"]).trim(), "1");
    assert_eq!(ok(url, &["append", "farm/soil", "22.0"]).trim(), "2");
    let (success, stdout, _) =
        woof_with_stdin(url, &["append", "farm/soil", "-"], Some(b"from stdin"));
    assert!(success);
    assert_eq!(stdout.trim(), "3");
    assert_eq!(ok(url, &["get", "farm/soil", "3"]).trim(), "from stdin");
    assert_eq!(ok(url, &["latest", "farm/soil"]).trim(), "3");
    assert_eq!(
        ok(url, &["scan", "farm/soil", "--from", "2"]),
        "2\t22.0\n3\tfrom stdin\n"
    );

    // JSON: one object per line.
    let json = ok(url, &["--json", "scan", "farm/soil"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["payload"], "21.5");
    let d: serde_json::Value =
        serde_json::from_str(&ok(url, &["--json", "topic", "describe", "farm/soil"])).unwrap();
    assert_eq!(d["history"], 50);
    assert_eq!(d["last_seq"], 3);

    // Producer retries.
    let first = ok(
        url,
        &[
            "append",
            "farm/soil",
            "x",
            "--producer",
            "p1",
            "--producer-seq",
            "1",
        ],
    );
    let again = ok(
        url,
        &[
            "--json",
            "append",
            "farm/soil",
            "x",
            "--producer",
            "p1",
            "--producer-seq",
            "1",
        ],
    );
    assert_eq!(first.trim(), "4");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(4), Some(true))
    );

    // Errors: one line, non-zero exit, the gRPC code named.
    let err = fails(url, &["get", "farm/soil", "99"]);
    assert!(err.starts_with("error: OUT_OF_RANGE: sequence 99"), "{err}");
    assert_eq!(
        err.matches("is out of range").count(),
        1,
        "said once: {err}"
    );
    assert!(fails(url, &["get", "nope", "1"]).contains("NOT_FOUND"));
    assert!(fails(url, &["topic", "create", "Bad Name"]).contains("INVALID_ARGUMENT"));
    assert!(fails(url, &["topic", "create", "farm/soil"]).contains("ALREADY_EXISTS"));
    assert!(fails(url, &["topic", "create", "z", "--history", "0"]).contains("at least 1"));

    // Lines of standard input, each an element, on one stream.
    let (success, stdout, stderr) = woof_with_stdin(
        url,
        &["append", "farm/soil", "-", "--lines"],
        Some(b"l1\nl2\r\n\nl4"),
    );
    assert!(success, "{stderr}");
    assert_eq!(stdout, "5\n6\n7\n8\n");
    assert_eq!(
        ok(url, &["scan", "farm/soil", "--from", "5"]),
        "5\tl1\n6\tl2\n7\t\n8\tl4\n"
    );
    ok(
        url,
        &["topic", "create", "farm/tiny", "--element-max-bytes", "4"],
    );
    let (success, stdout, stderr) = woof_with_stdin(
        url,
        &["append", "farm/tiny", "-", "--lines"],
        Some(b"a\ntoo long\nb\n"),
    );
    assert!(!success);
    assert_eq!(stdout, "1\n2\n", "the lines on either side are appended");
    assert!(stderr.contains("line 2: INVALID_ARGUMENT"), "{stderr}");
    assert!(
        stderr.contains("1 of 3 lines were not appended"),
        "{stderr}"
    );
    assert!(fails(url, &["append", "farm/tiny", "x", "--lines"]).contains("give - as the data"));

    assert!(ok(url, &["topic", "delete", "farm/tiny"]).contains("deleted"));
    assert!(ok(url, &["topic", "delete", "farm/soil"]).contains("deleted"));
    assert_eq!(ok(url, &["topic", "list"]).trim(), "no topics");
}

#[test]
fn tail_follows_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_in(dir.path());
    let url = node.url.as_str();
    ok(url, &["topic", "create", "t"]);
    ok(url, &["append", "t", "old"]);
    let mut tail = Command::new(woof_bin())
        .args(["--server", url, "tail", "t", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = |rx: &mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(line(&rx), "1\told");
    ok(url, &["append", "t", "new"]);
    assert_eq!(line(&rx), "2\tnew");
    // Ctrl-C ends it cleanly.
    Command::new("kill")
        .args(["-INT", &tail.id().to_string()])
        .status()
        .unwrap();
    let status = tail.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn node_start_reads_a_config_file_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = dir.path().join("node.toml");
    std::fs::write(
        &good,
        format!(
            "data_dir = {:?}\ngrpc_listen = \"127.0.0.1:0\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let node = NodeProcess::start(&["--config", good.to_str().unwrap()]);
    ok(&node.url, &["topic", "create", "cfg"]);
    assert!(
        data.join("db").exists(),
        "data went to the configured directory"
    );
    drop(node);

    for (text, expect) in [
        ("data_dir = ", "line 1"),
        ("data_dirr = \"/tmp/x\"", "unknown field"),
        ("grpc_listen = 7", "grpc_listen"),
        ("\u{0}\u{1}garbage", "config"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(woof_bin())
            .args(["node", "start", "--config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{text:?}: {stderr}");
        assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
    }
    let out = Command::new(woof_bin())
        .args(["node", "start", "--config", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/node.toml"));
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(&format!("http://127.0.0.1:{port}"), &["topic", "list"]);
    assert!(err.contains("cannot reach the woof node"), "{err}");
    assert!(fails("not a url", &["topic", "list"]).contains("cannot reach"));
}

#[test]
fn ctrl_c_stops_the_node_cleanly_even_with_a_subscriber_attached() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start_in(dir.path());
    let url = node.url.clone();
    ok(&url, &["topic", "create", "t"]);
    ok(&url, &["append", "t", "kept"]);
    let tail = Command::new(woof_bin())
        .args(["--server", &url, "tail", "t"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &node.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not stop within 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // The subscriber was told, in one line, and exited non-zero.
    let out = tail.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    // The data survived the stop.
    let node = NodeProcess::start_in(dir.path());
    assert_eq!(ok(&node.url, &["get", "t", "1"]).trim(), "kept");
}

/// The README's first command must keep working and keep showing what it says.
#[test]
fn the_demo_runs_and_shows_each_step() {
    let out = Command::new(woof_bin()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches(" alive ").count(),
        3,
        "three nodes alive: {stdout}"
    );
    assert_eq!(
        stdout.matches("in order, none twice: true").count(),
        2,
        "the archive and the smoothed vibration, each whole: {stdout}"
    );
    for expected in [
        "no gap, no duplicate: true",
        "(duplicate: true)",
        "answered in order: #21 #22 #23 #24 #25 #26 #27 #28 #29 #30",
        "it now holds #26..#30",
        "get #3: OUT_OF_RANGE",
        "still holds #1..#12; the next append is #13",
        "replicated 3 times",
        "on purpose: it hands its groups over first",
        "the planned restart: ",
        "took over after an election; appends waited at most",
        "acknowledged but missing: 0",
        "dry-alarm: done #12, lag 0",
        "archive: done #12, lag 0",
        r#""alert":"above""#,
        "farm/north/archive holds 12 copies of the readings",
        "in order, none twice: true",
        "placement tier(edge) & attr(site=mill): runs on edge-",
        "placement tier(cloud): runs on cloud-",
        "holds 30 results for 30 readings",
        r#"mill/motor-3/alerts #1: {"alert":"motor failing""#,
        "mill/motor-3/alerts/1 made by worn-bearing from mill/motor-3/smoothed/27 on cloud-",
        "mill/motor-3/smoothed/27 made by smooth from mill/motor-3/vibration/27 on edge-",
        "mill/motor-3/vibration/27 appended by motor-3's sensor",
        "| #30: rms of 4 readings",
        "readings 60  acknowledged 60  refused 0  given up 0",
        "farm/north/probe-7 holds 60 readings: every acknowledged one once, in the device's order\n",
        "followed from #1: 3 elements received, in order, once each",
        r#"probe-7 got cmd/probe-7 #3: {"valve":"closed"}"#,
        "cleaned up",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The node smooth ran on was stopped: every node sees it gone, and the
    // listing names the node smooth runs on now.
    let moved = stdout
        .lines()
        .find_map(|l| l.split_once("smooth moved from ")?.1.split_once(';'))
        .map(|(from_to, _)| from_to.split_once(" to ").expect("from X to Y"))
        .expect("the line saying where smooth moved");
    assert_ne!(moved.0, moved.1, "smooth did not move: {stdout}");
}

/// The binary's allocator commits memory as it is used (ADR 48): its arena
/// is reserved, not mapped readable and writable whole (mimalloc's default
/// on Linux, which left a node holding about half as much memory again).
/// Fails if the option is set after mimalloc made its arena (set in `main`,
/// it was: checked), set to another value, or under another option's
/// number.
#[cfg(target_os = "linux")]
#[test]
fn the_allocator_commits_its_memory_as_used() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", node.child.id())).unwrap();
    // Anonymous mappings of 512 MiB or more: mimalloc's arena (1 GiB).
    let large: Vec<(u64, &str)> = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (from, to) = f.first()?.split_once('-')?;
            let mib =
                (u64::from_str_radix(to, 16).ok()? - u64::from_str_radix(from, 16).ok()?) >> 20;
            (mib >= 512 && f.len() == 5).then_some((mib, f[1]))
        })
        .collect();
    assert!(!large.is_empty(), "no arena found in:\n{maps}");
    assert!(
        large.iter().all(|(_, perms)| !perms.starts_with("rw")),
        "an arena mapped readable and writable whole: {large:?}"
    );
}
