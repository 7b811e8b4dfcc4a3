//! `failover`: how long appends stop when a topic's leader dies, and that
//! none of them is lost.
//!
//! A 3-node cluster holds one topic with 3 replicas. One client appends
//! continuously (5 ms between appends) through a node that is not the
//! leader, as a producer, retrying each append until it is acknowledged (a
//! retry is safe: the producer sequence makes it idempotent). Each trial
//! SIGKILLs the leader's process and measures the time from the kill to the
//! first acknowledged append sent after it (the kill is sent right after an
//! acknowledgement, while the client pauses, so no append is in flight; the
//! figure includes that pause); appends go on for a second, then
//! the killed node starts again on its data directory, joining through a
//! survivor, and the trial ends once the leader reports all three replicas
//! caught up. Then as many trials pause the leader instead (SIGSTOP for
//! 3 s, then SIGCONT): the same figures, and the paused node must step
//! down and catch up. At the end, the whole topic is scanned and every acknowledged
//! append must be there at its acknowledged number, numbered densely from 1,
//! with no element twice; every node must hold the same log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use woof_proto::v1;

use crate::nodes::{self, Client, Cluster};
use crate::report::{Report, probe_machine};

const TOPIC: &str = "bench/failover";
/// Between two appends of the client.
const PAUSE: Duration = Duration::from_millis(5);
/// How long one attempt may take before the client gives up and retries.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two attempts of one append.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long one append may go unacknowledged before the run fails.
const APPEND_DEADLINE: Duration = Duration::from_secs(30);
/// How long appends may stop after a kill before the run fails.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long a paused leader stays stopped (SIGSTOP to SIGCONT): well past
/// an election, so that it comes back deposed.
const PAUSED_FOR: Duration = Duration::from_secs(3);
/// How long a restarted node may take to catch up.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

/// What is done to the leader in a trial.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a restart on its data directory.
    Kill,
    /// SIGSTOP for [`PAUSED_FOR`], then SIGCONT: it comes back believing it
    /// leads, and must step down without splitting the log.
    Pause,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Kill => "SIGKILLed",
            Fault::Pause => "SIGSTOPped",
        })
    }
}

/// One acknowledged append.
struct Ack {
    /// The producer sequence; the payload is [`payload`] of it.
    pseq: u64,
    /// The sequence number it was acknowledged with.
    seq: u64,
    /// When the attempt that was acknowledged was sent.
    sent: Instant,
    acked: Instant,
    /// Whether the answer said it was a retry of a committed append.
    duplicate: bool,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// Failed attempts: when, and why.
    errors: Vec<(Instant, String)>,
}

fn payload(pseq: u64) -> String {
    format!("failover-{pseq}")
}

pub async fn run(woof: &Path, trials: usize, peer: bool) -> anyhow::Result<Report> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    if peer {
        bail!("failover --peer nats: not built yet");
    }
    let mut cluster = Cluster::start(woof, 3).await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    match measure(&mut cluster, &mut report, trials).await {
        Ok(()) => Ok(report),
        Err(e) => Err(cluster.explain(e)),
    }
}

async fn measure(cluster: &mut Cluster, report: &mut Report, trials: usize) -> anyhow::Result<()> {
    nodes::create(cluster.url(0), TOPIC, 3).await?;
    let producer = format!("bench-failover-{}", std::process::id());
    let mut client_node = 0;
    let (url_tx, url_rx) = watch::channel(cluster.url(client_node).to_string());
    let (stop_tx, stop_rx) = watch::channel(false);
    let log = Arc::new(Mutex::new(Log::default()));
    let mut task = tokio::spawn(appender(url_rx, stop_rx, producer, log.clone()));

    let mut phases = Vec::new();
    for fault in [Fault::Kill, Fault::Pause] {
        let mut failovers = Vec::new();
        let mut catch_ups = Vec::new();
        for trial in 1..=trials {
            // The appends keep the group awake: its leader is known.
            let leader = cluster.leader(client_node, TOPIC).await?;
            if leader == client_node {
                client_node = (0..cluster.nodes.len())
                    .find(|i| *i != leader && cluster.nodes[*i].alive())
                    .context("no node but the leader runs")?;
                url_tx.send_replace(cluster.url(client_node).to_string());
            }
            wait_ack(&log, Instant::now(), Duration::from_secs(10), &mut task)
                .await
                .with_context(|| format!("trial {trial}: appends through node {client_node}"))?;

            let struck = Instant::now();
            match fault {
                Fault::Kill => cluster.kill(leader)?,
                Fault::Pause => cluster.signal(leader, "STOP")?,
            }
            let waited = wait_ack(&log, struck, FAILOVER_DEADLINE, &mut task).await;
            if fault == Fault::Pause && waited.is_err() {
                // Never leave a node stopped behind an error.
                let _ = cluster.signal(leader, "CONT");
            }
            let (_, acked) = waited.with_context(|| {
                format!("trial {trial}: appends after the leader (node {leader}) was {fault}")
            })?;
            let failover = acked - struck;
            failovers.push(failover);

            let down_for = match fault {
                Fault::Kill => Duration::from_secs(1),
                Fault::Pause => PAUSED_FOR.saturating_sub(struck.elapsed()),
            };
            tokio::time::sleep(down_for).await;
            let back = Instant::now();
            match fault {
                Fault::Kill => cluster
                    .restart(leader, client_node)
                    .await
                    .with_context(|| format!("trial {trial}: restarting node {leader}"))?,
                Fault::Pause => cluster.signal(leader, "CONT")?,
            }
            wait_caught_up(cluster, client_node, Some(&mut task))
                .await
                .with_context(|| format!("trial {trial}: node {leader} catching up"))?;
            let catch_up = back.elapsed();
            catch_ups.push(catch_up);
            eprintln!(
                "trial {trial}/{trials}: leader node {leader} {fault}, appends through node {client_node} resumed after {:.1} ms; back and caught up after {:.1} ms",
                failover.as_secs_f64() * 1e3,
                catch_up.as_secs_f64() * 1e3
            );
        }
        phases.push((fault, failovers, catch_ups));
    }

    stop_tx.send_replace(true);
    match tokio::time::timeout(APPEND_DEADLINE + ATTEMPT_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the appending client")),
        Ok(Err(e)) => bail!("the appending client panicked: {e}"),
        Err(_) => bail!("the appending client did not stop"),
    }
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));

    let secs = |d: &Duration| d.as_secs_f64() * 1e3;
    for (fault, failovers, catch_ups) in &phases {
        let case = format!(
            "3 nodes, leader {fault}, 1 client via a follower ({} ms between appends)",
            PAUSE.as_millis()
        );
        let (struck, back) = match fault {
            Fault::Kill => ("kill", "restart"),
            Fault::Pause => ("pause", "SIGCONT"),
        };
        report.row(&case, "trials", trials as f64, "");
        report.row(
            &case,
            format!("{struck} to next acknowledged append, median"),
            median(failovers),
            "ms",
        );
        report.row(
            &case,
            format!("{struck} to next acknowledged append, min"),
            failovers.iter().map(secs).fold(f64::MAX, f64::min),
            "ms",
        );
        report.row(
            &case,
            format!("{struck} to next acknowledged append, max"),
            failovers.iter().map(secs).fold(0.0, f64::max),
            "ms",
        );
        report.row(
            &case,
            format!("{back} to all 3 replicas caught up, median"),
            median(catch_ups),
            "ms",
        );
    }
    let case = "3 nodes, all trials".to_string();
    report.row(
        &case,
        "failed append attempts (retried)",
        log.errors.len() as f64,
        "",
    );
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for (_, e) in &log.errors {
        *why.entry(e.clone()).or_default() += 1;
    }
    let mut why: Vec<(String, usize)> = why.into_iter().collect();
    why.sort_by_key(|w| std::cmp::Reverse(w.1));
    for (e, n) in why.iter().take(5) {
        report.notes.push(format!("{n} failed attempts: {e}"));
    }

    // Everything acknowledged is there, once, where it was acknowledged.
    wait_caught_up(cluster, client_node, None)
        .await
        .context("the final catch-up")?;
    tokio::time::sleep(Duration::from_millis(500)).await; // followers apply on the next heartbeat
    let leader = cluster.leader(client_node, TOPIC).await?;
    let elements = nodes::scan_all(cluster.url(leader), TOPIC).await?;
    let check = check(&elements, &log.acks);
    let case = format!("whole topic scanned from node {leader} (the leader)");
    report.row(&case, "acknowledged appends", log.acks.len() as f64, "");
    report.row(&case, "elements", elements.len() as f64, "");
    report.row(
        &case,
        "lost (acknowledged, not at their number)",
        check.lost.len() as f64,
        "",
    );
    report.row(&case, "duplicates", check.duplicates as f64, "");
    report.row(&case, "numbering gaps", check.misnumbered as f64, "");
    report.row(
        &case,
        "elements never acknowledged",
        check.unacknowledged as f64,
        "",
    );
    report.row(
        &case,
        "retries answered as already committed",
        log.acks.iter().filter(|a| a.duplicate).count() as f64,
        "",
    );
    if !check.lost.is_empty() {
        report.failures.push(format!(
            "{} acknowledged appends lost or moved, first ones (producer seq, acknowledged #, found): {:?}",
            check.lost.len(),
            &check.lost[..check.lost.len().min(10)]
        ));
    }
    if check.duplicates > 0 {
        report
            .failures
            .push(format!("{} elements appended twice", check.duplicates));
    }
    if check.misnumbered > 0 {
        report.failures.push(format!(
            "{} elements not numbered densely from 1",
            check.misnumbered
        ));
    }
    if check.unacknowledged > 0 {
        report.failures.push(format!(
            "{} elements that no acknowledged append wrote",
            check.unacknowledged
        ));
    }

    // Every replica answers the same log (a follower may lag a heartbeat).
    for i in (0..cluster.nodes.len()).filter(|i| *i != leader) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let theirs = nodes::scan_all(cluster.url(i), TOPIC).await?;
            if theirs == elements {
                break;
            }
            if Instant::now() > deadline {
                report.failures.push(format!(
                    "node {i} answers a different log than the leader's: {} elements, against {}",
                    theirs.len(),
                    elements.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The median of some durations, in ms.
fn median(d: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    match ms.len() {
        0 => 0.0,
        n if n % 2 == 1 => ms[n / 2],
        n => (ms[n / 2 - 1] + ms[n / 2]) / 2.0,
    }
}

/// Appends [`payload`]s as `producer` through the node at the URL `url`
/// holds (reconnecting when it changes) until `stop`, each one retried until
/// acknowledged, at most [`APPEND_DEADLINE`].
async fn appender(
    mut url: watch::Receiver<String>,
    stop: watch::Receiver<bool>,
    producer: String,
    log: Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    let record = |e: String| {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors
            .push((Instant::now(), e));
    };
    let mut client: Option<Client> = None;
    for pseq in 1u64.. {
        if *stop.borrow() {
            break;
        }
        let first = Instant::now();
        let request = v1::AppendRequest {
            topic: TOPIC.into(),
            payload: payload(pseq).into_bytes().into(),
            producer: Some(v1::Producer {
                id: producer.clone(),
                seq: pseq,
            }),
        };
        loop {
            if url.has_changed()? {
                client = None;
            }
            let attempt = async {
                if client.is_none() {
                    let to = url.borrow_and_update().clone();
                    client = Some(nodes::connect(&to).await.map_err(|e| format!("{e:#}"))?);
                }
                let c = client.as_mut().expect("connected above");
                let sent = Instant::now();
                match tokio::time::timeout(ATTEMPT_TIMEOUT, c.append(request.clone())).await {
                    Ok(Ok(r)) => Ok((sent, r.into_inner())),
                    Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                    Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
                }
            };
            let last = match attempt.await {
                Ok((sent, r)) => {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .acks
                        .push(Ack {
                            pseq,
                            seq: r.seq,
                            sent,
                            acked: Instant::now(),
                            duplicate: r.duplicate,
                        });
                    break;
                }
                Err(e) => e,
            };
            record(last.clone());
            if first.elapsed() > APPEND_DEADLINE {
                bail!(
                    "append {pseq} not acknowledged within {APPEND_DEADLINE:?}; last error: {last}"
                );
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(())
}

/// The error of an appending client that stopped on its own.
async fn stopped(task: &mut JoinHandle<anyhow::Result<()>>) -> anyhow::Error {
    match task.await {
        Ok(Ok(())) => anyhow!("the appending client stopped early"),
        Ok(Err(e)) => e.context("the appending client failed"),
        Err(e) => anyhow!("the appending client panicked: {e}"),
    }
}

/// Waits for an append whose acknowledged attempt was sent at `since` or
/// later: (when sent, when acknowledged).
async fn wait_ack(
    log: &Mutex<Log>,
    since: Instant,
    within: Duration,
    task: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<(Instant, Instant)> {
    loop {
        {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = log.acks.iter().rev().take_while(|a| a.sent >= since).last() {
                return Ok((a.sent, a.acked));
            }
            if since.elapsed() > within {
                let errors: Vec<&String> = log
                    .errors
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(_, e)| e)
                    .rev()
                    .take(3)
                    .collect();
                bail!("no append acknowledged within {within:?}; last errors: {errors:?}");
            }
        }
        if task.is_finished() {
            return Err(stopped(task).await);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the leader of [`TOPIC`] (asked through node `via`) reports
/// every node's replica matching: all equal, or all at least where the
/// leader's log was one answer before. Fails early if the appending
/// client (`task`, while it runs) fails.
async fn wait_caught_up(
    cluster: &Cluster,
    via: usize,
    mut task: Option<&mut JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    let peers: HashSet<&str> = cluster.nodes.iter().map(|m| m.peer_id.as_str()).collect();
    let mut before: Option<u64> = None;
    loop {
        let last = match nodes::describe(cluster.url(via), TOPIC).await {
            Ok(info) => {
                let matched: HashMap<&str, u64> = info
                    .progress
                    .iter()
                    .map(|p| (p.peer.as_str(), p.matched_index))
                    .collect();
                let min = matched.values().copied().min().unwrap_or(0);
                let max = matched.values().copied().max().unwrap_or(0);
                if matched.len() == peers.len()
                    && matched.keys().all(|p| peers.contains(p))
                    && (min == max || before.is_some_and(|b| min >= b))
                {
                    return Ok(());
                }
                if !matched.is_empty() {
                    before = Some(max);
                }
                format!("{:?}", info.progress)
            }
            Err(e) => format!("{e:#}"),
        };
        if let Some(task) = task.as_mut().filter(|t| t.is_finished()) {
            return Err(stopped(task).await);
        }
        if Instant::now() > deadline {
            bail!("replicas not caught up within {CATCH_UP_DEADLINE:?}; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Check {
    /// (producer seq, acknowledged number, payload found there).
    lost: Vec<(u64, u64, Option<String>)>,
    duplicates: usize,
    misnumbered: usize,
    unacknowledged: usize,
}

/// Compares the topic's elements with what the client was told.
fn check(elements: &[v1::Element], acks: &[Ack]) -> Check {
    let misnumbered = elements
        .iter()
        .enumerate()
        .filter(|(i, e)| e.seq != *i as u64 + 1)
        .count();
    let by_seq: HashMap<u64, &[u8]> = elements.iter().map(|e| (e.seq, &e.payload[..])).collect();
    let distinct: HashSet<&[u8]> = elements.iter().map(|e| &e.payload[..]).collect();
    let acked: HashSet<Vec<u8>> = acks.iter().map(|a| payload(a.pseq).into_bytes()).collect();
    let lost = acks
        .iter()
        .filter_map(|a| {
            let found = by_seq.get(&a.seq);
            (found != Some(&payload(a.pseq).as_bytes())).then(|| {
                (
                    a.pseq,
                    a.seq,
                    found.map(|p| String::from_utf8_lossy(p).into_owned()),
                )
            })
        })
        .collect();
    Check {
        lost,
        duplicates: elements.len() - distinct.len(),
        misnumbered,
        unacknowledged: distinct.iter().filter(|p| !acked.contains(**p)).count(),
    }
}
