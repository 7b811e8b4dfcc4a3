#!/usr/bin/env bash
# A short coverage-guided fuzz pass over every target, on stable Rust and
# without installing anything: builds the targets with the instrumentation
# that `cargo fuzz build -s none` uses (the same flags, profile and target
# directory, so the two share a build) and runs each with libFuzzer for a
# few seconds, from the committed corpus, with a fixed seed. Fails on the
# first crash and prints it; the input is left in target/fuzz-artifacts/.
#
#   mcu-bridge/fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]
#
# `./dev test` runs it with 15 s a target. To fuzz for longer, see README.md.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-15}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(frame device gateway)

# libfuzzer-sys compiles libFuzzer (C++) in its build script.
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "fuzz: installing g++ (libfuzzer-sys builds libFuzzer from source)" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq g++ >/dev/null
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
# cargo-fuzz 0.13's flags for `-s none` in release mode (src/project.rs);
# none of them needs a nightly compiler.
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
flags+=" --cfg fuzzing"
case "$triple" in *-linux-*) flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth" ;; esac
flags+=" -Cdebug-assertions -C codegen-units=1"
RUSTFLAGS="$flags${RUSTFLAGS:+ $RUSTFLAGS}" \
  cargo build --quiet --release --config profile.release.debug=true --target "$triple" --bins

mkdir -p target/fuzz-ci target/fuzz-artifacts
for t in "${targets[@]}"; do
  # New inputs go to a scratch directory: the committed corpus stays as is,
  # and every run starts from the same inputs.
  work="target/fuzz-ci/$t"
  rm -rf "$work"
  mkdir -p "$work"
  log="target/fuzz-ci/$t.log"
  if ! "target/$triple/release/$t" -seed=1 -max_total_time="$secs" -max_len=4096 \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="target/fuzz-artifacts/$t-" "$work" "corpus/$t" >"$log" 2>&1; then
    grep -v '^"' "$log" | tail -n 40 >&2
    echo "fuzz: target $t crashed; the input is in mcu-bridge/fuzz/target/fuzz-artifacts/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  echo "fuzz: $t: $runs runs in ${secs} s, $cov, no crash"
done
