//! The node's side of a Python worker.
//!
//! [`Worker::start`] starts the process and loads the handler;
//! [`Worker::invoke`] runs it on one element within its time budget,
//! answering the reads it makes through [`Reads`]. A worker that overran
//! is killed; one that died is reported with why (its exit, and the end of
//! what it wrote on standard error). Either way it is spent: the caller
//! starts a new one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::wire::{self, Answer, Ask, FromWorker, Load, Outcome, ToWorker};
use crate::{Error, Result, WORKER_ARG};

/// How long loading a handler (compiling it and running its module) may take.
pub const LOAD_TIME: Duration = Duration::from_secs(10);
/// How much of a worker's standard error is kept to say why it died.
const STDERR_TAIL_BYTES: usize = 2048;

/// What one invocation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub time: Duration,
    pub memory_bytes: u64,
}

impl Default for Limits {
    /// The defaults: 1 s and 64 MiB.
    fn default() -> Self {
        Self {
            time: Duration::from_secs(1),
            memory_bytes: 64 << 20,
        }
    }
}

/// Answers a handler's reads (`ctx.get`, `ctx.latest`, `ctx.scan`).
pub trait Reads {
    fn answer(&mut self, ask: Ask) -> impl Future<Output = Answer> + Send;
}

/// One warm worker process with one handler loaded.
pub struct Worker {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
    stderr: Arc<Mutex<String>>,
    limits: Limits,
}

impl Worker {
    /// Starts `program` as a worker and loads `load` into it; a handler
    /// that cannot be loaded is [`Error::Refused`].
    pub async fn start(program: &Path, mut load: Load, limits: Limits) -> Result<Self> {
        let mut child = Command::new(program)
            .arg(WORKER_ARG)
            // The handler sees no environment, even if it found a way to look.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Start {
                program: program.display().to_string(),
                error: e.to_string(),
            })?;
        let (Some(to), Some(from), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three pipes were asked for");
        };
        let tail = Arc::new(Mutex::new(String::new()));
        tokio::spawn(keep_tail(stderr, Arc::clone(&tail)));
        load.memory_bytes = limits.memory_bytes;
        let mut worker = Self {
            child,
            to,
            from,
            stderr: tail,
            limits,
        };
        let loaded = tokio::time::timeout(LOAD_TIME, async {
            wire::send(&mut worker.to, &ToWorker::Load(load)).await?;
            wire::receive::<FromWorker>(&mut worker.from).await
        })
        .await;
        match loaded {
            Ok(Ok(Some(FromWorker::Loaded))) => Ok(worker),
            Ok(Ok(Some(FromWorker::Refused(refusal)))) => Err(Error::Refused(refusal)),
            Ok(Ok(Some(other))) => Err(Error::Wire(format!("unexpected {other:?}"))),
            Ok(Ok(None) | Err(_)) => Err(worker.died().await),
            Err(_) => {
                worker.kill().await;
                Err(Error::Overran(LOAD_TIME.as_millis() as u64))
            }
        }
    }

    /// Runs the handler on element `seq`. An error other than a Python
    /// exception (which is in the [`Outcome`]) means the worker is spent.
    pub async fn invoke(
        &mut self,
        seq: u64,
        payload: &[u8],
        reads: &mut impl Reads,
    ) -> Result<Outcome> {
        let exchange = async {
            let invoke = ToWorker::Invoke {
                seq,
                payload: payload.to_vec(),
            };
            wire::send(&mut self.to, &invoke).await?;
            loop {
                match wire::receive::<FromWorker>(&mut self.from).await? {
                    Some(FromWorker::Done(outcome)) => return Ok(Some(outcome)),
                    Some(FromWorker::Ask(ask)) => {
                        let answer = reads.answer(ask).await;
                        wire::send(&mut self.to, &ToWorker::Answer(answer)).await?;
                    }
                    Some(other) => {
                        return Err(Error::Wire(format!("unexpected {other:?}")));
                    }
                    None => return Ok(None),
                }
            }
        };
        match tokio::time::timeout(self.limits.time, exchange).await {
            Ok(Ok(Some(outcome))) => Ok(outcome),
            Ok(Ok(None) | Err(_)) => Err(self.died().await),
            Err(_) => {
                self.kill().await;
                Err(Error::Overran(self.limits.time.as_millis() as u64))
            }
        }
    }

    /// The process id, for tests that kill a worker from outside.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Why the worker stopped talking.
    async fn died(&mut self) -> Error {
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                self.kill().await;
                None
            }
        };
        // Let the last of its standard error arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        Error::Died(why(status, &tail, self.limits.memory_bytes))
    }
}

fn why(status: Option<ExitStatus>, stderr: &str, memory_bytes: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    let last = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("note:"))
        .unwrap_or("");
    let said = if last.is_empty() {
        String::new()
    } else {
        format!(" (it said: {last})")
    };
    if stderr.contains("memory allocation of") {
        return format!(
            "it went past its memory cap of {} MiB{said}",
            memory_bytes >> 20
        );
    }
    match status {
        Some(s) if s.signal() == Some(libc::SIGSEGV) => {
            format!("it crashed (SIGSEGV: its stack overflowed, or the interpreter broke){said}")
        }
        Some(s) if s.signal().is_some() => {
            format!("it was killed by signal {}{said}", s.signal().unwrap_or(0))
        }
        Some(s) => format!("it exited ({s}){said}"),
        None => format!("it stopped answering{said}"),
    }
}

async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<String>>) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
        let Ok(mut tail) = tail.lock() else { return };
        tail.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if tail.len() > STDERR_TAIL_BYTES {
            let mut cut = tail.len() - STDERR_TAIL_BYTES;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

/// The program that runs workers: this binary, unless told otherwise.
pub fn default_program() -> Option<PathBuf> {
    std::env::current_exe().ok()
}
