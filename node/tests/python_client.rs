//! The Python client example (`examples/python/`) against a real node:
//! `run.sh` makes its virtualenv (grpcio, grpcio-tools from PyPI) under the
//! target directory, generates the stubs from the .proto, and runs
//! `woof_client.py`, which checks what it gets and exits non-zero if not.

mod common;

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_runs_against_a_node() {
    let node = common::TestNode::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The virtualenv is kept in the target directory, so later runs skip pip.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let build = tempfile::tempdir().unwrap();
    let url = node.node.url();
    let out = tokio::process::Command::new("bash")
        .arg(root.join("examples/python/run.sh"))
        .arg(&url)
        .env("WOOF_PY_VENV", target.join("python-venv"))
        .env("WOOF_PY_BUILD", build.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "create again: ALREADY_EXISTS",
        "appended seqs [1, 2, 3, 4, 5]",
        "producer retry: seq 6 again, duplicate=True",
        "tailed 7 elements",
        "get from a missing topic: NOT_FOUND",
        "append to a missing topic: NOT_FOUND",
        "a bad topic name: INVALID_ARGUMENT",
        "an element over the topic's 64 bytes: INVALID_ARGUMENT",
        "an element not written yet: OUT_OF_RANGE",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    // The stubs went to the build directory, not into the repository.
    assert!(build.path().join("woof/v1/woof_pb2_grpc.py").exists());
    assert!(!root.join("examples/python/woof").exists());
}
