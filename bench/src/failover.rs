//! `failover`: how long appends stop when a topic's leader fails, how long
//! one append can take across it, and that none of them is lost.
//!
//! A 3-node cluster holds one topic with 3 replicas. One client appends
//! continuously (5 ms between appends) through a node that is not the
//! leader, as a producer, retrying each append until it is acknowledged
//! (each attempt given [`ATTEMPT_TIMEOUT`]; a retry is safe: the producer
//! sequence makes it idempotent). Each trial lets appends flow for a
//! second, strikes the leader right after an acknowledgement (while the
//! client pauses, so no append is in flight), and measures from the moment
//! the strike has landed to the first acknowledged append sent after it
//! (the figure includes the client's pause and up to one attempt timeout);
//! then it ends the fault and waits until the leader reports all three
//! replicas caught up. The faults, as many trials each:
//! - kill: SIGKILL; a second after appends resume, the node starts again
//!   on its data directory, joining through a survivor;
//! - stop: SIGTERM, a stop on purpose (a restart, an upgrade), measured
//!   from the signal: a woof node hands its leadership over before it
//!   exits; a second after appends resume and it has exited, it starts
//!   again as after a kill;
//! - pause: SIGSTOP for 3 s, then SIGCONT: it comes back believing it
//!   leads, and must step down without splitting the log;
//! - cut: with each node in its own network namespace (`netns.rs`, as
//!   root), the leader's link down for 3 s, then up: it hears nobody and
//!   nobody hears it, and no connection is reset. Where namespaces cannot
//!   be made, this phase is skipped and a note says why.
//!
//! Per fault: strike to the next acknowledged append (min, median, max),
//! recovery to all replicas caught up (median), the latency spike (in each
//! trial the longest append from its first attempt to its
//! acknowledgement; median and max over the trials), how many trials ended
//! with another server leading, and for the first trial a timeline plot:
//! each append's latency by when it was first sent, from a second before
//! the strike to the catch-up. At the end, the whole topic is read and
//! every acknowledged append must be there at its acknowledged number,
//! numbered densely from 1, with no element twice; every node must hold the
//! same log.
//!
//! With `--peer nats`, woof's cluster is stopped, and the same faults and
//! trials run on a 3-server NATS JetStream cluster (`sync_interval:
//! always`, the like-for-like setting; a stream with 3 replicas; servers in
//! namespaces for the cut): the client publishes through a server that does
//! not lead the stream, each message with a `Nats-Msg-Id` header
//! (JetStream's dedupe) and retried until acknowledged; the fault hits the
//! stream leader's server (a killed one is started again on its
//! configuration and store). The stream is then read back whole and checked
//! the same way (JetStream's violations are noted, not failures of the
//! run; that every replica holds the same messages is not checked), and
//! the report adds woof/JetStream ratios of the medians. nats-server's Raft
//! waits 4 to 9 s without a leader before it campaigns, so a 3 s pause or
//! cut usually ends before any election: appends resume when the leader
//! returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use woof_proto::v1;

use crate::nats::{self, JetStream};
use crate::netns::Net;
use crate::nodes::{self, Client, Cluster};
use crate::report::{Report, Series, Timeline, median, probe_machine};

const TOPIC: &str = "bench/failover";
/// JetStream's subject for the same appends (in the stream `BENCH`).
const SUBJECT: &str = "bench.failover";
/// How the report names the systems.
const WOOF: &str = "woof";
const PEER: &str = "NATS JetStream sync always";
/// Between two appends of the client.
const PAUSE: Duration = Duration::from_millis(5);
/// How long one attempt may take before the client gives up and retries
/// (an attempt sent into a cut link never hears back).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Between two attempts of one append.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long one append may go unacknowledged before the run fails.
const APPEND_DEADLINE: Duration = Duration::from_secs(30);
/// How long appends may stop after a strike before the run fails.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// Steady appends before each strike (the timeline's first second).
const LEAD_IN: Duration = Duration::from_secs(1);
/// How long a paused or cut leader stays so: well past woof's election,
/// so that it comes back deposed.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long a killed leader stays down after appends resume.
const KILLED_FOR: Duration = Duration::from_secs(1);
/// How long the leader must stay the same before a trial strikes it: longer
/// than woof's round of spreading leaderships (2 s, ADR 42), which after a
/// restart hands the topic to the node that came back. Struck at the wrong
/// moment, the bench would fault a node that had just stopped leading.
const SETTLED_FOR: Duration = Duration::from_secs(3);
/// The most times a trial waits [`SETTLED_FOR`] for the leader to settle.
const SETTLE_TRIES: usize = 5;
/// How long the replicas may take to catch up after a fault ends.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

/// What is done to the leader in a trial.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// SIGKILL, then a restart on its data directory.
    Kill,
    /// SIGTERM (a stop on purpose: a restart, an upgrade), then a restart
    /// on its data directory.
    Stop,
    /// SIGSTOP for [`DOWN_FOR`], then SIGCONT.
    Pause,
    /// Its link down for [`DOWN_FOR`], then up.
    Cut,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Kill, Fault::Stop, Fault::Pause, Fault::Cut];

    /// What the leader was, in cases and titles.
    fn done(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILLed",
            Fault::Stop => "stopped (SIGTERM)",
            Fault::Pause => "SIGSTOPped",
            Fault::Cut => "cut off (link down)",
        }
    }

    /// The strike and the recovery, in metrics.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Fault::Kill => ("kill", "restart"),
            Fault::Stop => ("stop", "restart"),
            Fault::Pause => ("pause", "SIGCONT"),
            Fault::Cut => ("cut", "link up"),
        }
    }

    /// The strike and the recovery, as a timeline marks them.
    fn marks(self) -> (&'static str, &'static str) {
        match self {
            Fault::Kill => ("leader SIGKILLed", "restarted"),
            Fault::Stop => ("leader SIGTERMed", "restarted"),
            Fault::Pause => ("SIGSTOP", "SIGCONT"),
            Fault::Cut => ("link down", "link up"),
        }
    }
}

/// One acknowledged append.
struct Ack {
    /// The producer sequence; the payload is [`payload`] of it.
    pseq: u64,
    /// The sequence number it was acknowledged with.
    seq: u64,
    /// When its first attempt was sent.
    first: Instant,
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

/// The client's log, even if a panic poisoned its lock.
fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn payload(pseq: u64) -> String {
    format!("failover-{pseq}")
}

/// A system whose leader the trials strike: woof's cluster, or JetStream's.
/// Servers are numbered from 0; server `i` runs on host `i` of the net.
trait System {
    type Producer: Producer;

    /// A client that appends (publishes) as the producer `id`.
    fn producer(&self, id: String) -> Self::Producer;
    fn servers(&self) -> usize;
    fn running(&self, i: usize) -> bool;
    /// The client URL of server `i` (of its last start).
    fn url(&self, i: usize) -> String;
    /// The namespaces the servers run in, if they do.
    fn net(&self) -> Option<&Net>;
    /// The server leading the topic (stream), asking through server `via`.
    async fn leader(&self, via: usize) -> anyhow::Result<usize>;
    fn kill(&mut self, i: usize) -> anyhow::Result<()>;
    /// Waits until server `i` exits (it was sent a SIGTERM).
    async fn reap(&mut self, i: usize) -> anyhow::Result<()>;
    /// Starts the killed server `i` again on its data, joining through
    /// server `via`, and waits until it is back.
    async fn restart(&mut self, i: usize, via: usize) -> anyhow::Result<()>;
    /// Sends `signal` (`STOP`, `CONT`) to server `i`.
    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()>;
    /// Waits (bounded) until the leader, asked through server `via`,
    /// reports every replica caught up.
    async fn wait_caught_up(&self, via: usize) -> anyhow::Result<()>;
    /// Every element as (number, payload), read from server `from`.
    async fn read_all(&self, from: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>>;
    /// How the other replicas' logs differ from the `leader`'s `elements`
    /// (one line each), or `None` when this cannot be checked.
    async fn replicas_differ(
        &self,
        leader: usize,
        elements: &[(u64, Vec<u8>)],
    ) -> anyhow::Result<Option<Vec<String>>>;
    /// Adds the end of the servers' logs to an error.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error;
}

/// One client connection that appends through the server at a given URL.
trait Producer: Send + 'static {
    /// One attempt at appending [`payload`]`(pseq)` through the server at
    /// `url` (connecting first if it is not the one of the last attempt):
    /// the number it was acknowledged with, and whether the answer says it
    /// was a retry of a stored append.
    fn attempt(
        &mut self,
        url: &str,
        pseq: u64,
    ) -> impl Future<Output = anyhow::Result<(u64, bool)>> + Send;
}

pub async fn run(woof: &Path, trials: usize, peer: bool) -> anyhow::Result<Report> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let (net, skipped) = match Net::available() {
        Ok(()) => (Some(Arc::new(Net::create(3)?)), None),
        Err(why) => (None, Some(why)),
    };
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| *f != Fault::Cut || net.is_some())
        .collect();

    let cluster = Cluster::start_on(woof, 3, net.clone()).await?;
    nodes::create(cluster.url(0), TOPIC, 3).await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    if let Some(why) = skipped {
        report.notes.push(format!(
            "the cut phase (the leader's link taken down) was skipped: {why:#}"
        ));
    }
    let mut system = Woof { cluster };
    let outcome = trials_of(WOOF, &mut system, &faults, trials)
        .await
        .map_err(|e| system.explain(e))?;
    // The peer gets the machine to itself.
    drop(system);
    record(&mut report, WOOF, &outcome, false);

    if peer {
        // A peer that fails fails the run, after woof's figures are shown.
        if let Err(e) = peer_trials(&mut report, &faults, trials, net.clone()).await {
            report.failures.push(format!("{PEER}: {e:#}"));
        }
    }
    Ok(report)
}

/// The same trials on JetStream, then woof/JetStream ratios.
async fn peer_trials(
    report: &mut Report,
    faults: &[Fault],
    trials: usize,
    net: Option<Arc<Net>>,
) -> anyhow::Result<()> {
    let binary = nats::server()?;
    let js = JetStream::start_on(&binary, true, net).await?;
    report.versions.insert("peer".into(), js.version.clone());
    let mut system = Nats { js };
    let outcome = trials_of(PEER, &mut system, faults, trials)
        .await
        .map_err(|e| system.explain(e))?;
    drop(system);
    record(report, PEER, &outcome, true);
    for fault in faults {
        let (strike, back) = fault.words();
        for metric in [
            format!("{strike} to next acknowledged append, median"),
            format!("{back} to all 3 replicas caught up, median"),
            "longest append in a trial, median".to_string(),
        ] {
            report.ratio(
                format!("{WOOF} / {PEER}, leader {}", fault.done()),
                &metric,
                &case(WOOF, *fault),
                &case(PEER, *fault),
            );
        }
    }
    Ok(())
}

/// The report's case for one system (`who`) and fault.
fn case(who: &str, fault: Fault) -> String {
    format!(
        "{who}, 3 replicas, leader {}, 1 client via a follower ({} ms between appends)",
        fault.done(),
        PAUSE.as_millis()
    )
}

/// What one trial saw.
struct Trial {
    fault: Fault,
    /// 1 for the first trial of its fault.
    number: usize,
    leader: usize,
    /// The server the client appended through.
    via: usize,
    /// When the trial began (its lead-in).
    began: Instant,
    struck: Instant,
    /// When the first append sent after the strike was acknowledged.
    resumed: Instant,
    /// When the leader was restarted, SIGCONTed or linked up.
    back: Instant,
    /// When every replica was reported caught up after that.
    caught_up: Instant,
    /// Whether another server led once every replica had caught up.
    deposed: bool,
}

/// What a system's trials left: the trials, the client's log, and the
/// final read of the whole log.
struct Outcome {
    trials: Vec<Trial>,
    log: Log,
    elements: Vec<(u64, Vec<u8>)>,
    /// The server the elements were read from (the leader).
    read_from: usize,
    /// How the other replicas differ from it; `None`: not checked.
    replicas_differ: Option<Vec<String>>,
}

/// `per_fault` trials of each fault on `system`, under one steady client,
/// then the whole log read back.
async fn trials_of<S: System>(
    who: &str,
    system: &mut S,
    faults: &[Fault],
    per_fault: usize,
) -> anyhow::Result<Outcome> {
    let leader = system.leader(0).await?;
    let mut via = usize::from(leader == 0);
    let (url_tx, url_rx) = watch::channel(system.url(via));
    let (stop_tx, stop_rx) = watch::channel(false);
    let log = Arc::new(Mutex::new(Log::default()));
    let producer = system.producer(format!("bench-failover-{}", std::process::id()));
    let mut task = tokio::spawn(appender(producer, url_rx, stop_rx, log.clone()));
    // A failed trial returns early: the client must not go on appending.
    let _stop = AbortOnDrop(task.abort_handle());

    let mut trials = Vec::new();
    for &fault in faults {
        for number in 1..=per_fault {
            let trial = one_trial(system, fault, number, &mut via, &url_tx, &log, &mut task)
                .await
                .with_context(|| format!("{fault:?} trial {number}"))?;
            eprintln!(
                "{who}: {fault:?} trial {number}/{per_fault}: leader {} {}, appends through {} resumed after {:.1} ms; back and caught up after {:.1} ms",
                trial.leader,
                fault.done(),
                trial.via,
                ms(trial.resumed - trial.struck),
                ms(trial.caught_up - trial.back),
            );
            trials.push(trial);
        }
    }

    stop_tx.send_replace(true);
    match tokio::time::timeout(APPEND_DEADLINE + ATTEMPT_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the appending client")),
        Ok(Err(e)) => bail!("the appending client panicked: {e}"),
        Err(_) => bail!("the appending client did not stop"),
    }
    let log = std::mem::take(&mut *lock(&log));

    system
        .wait_caught_up(via)
        .await
        .context("the final catch-up")?;
    let leader = system.leader(via).await?;
    let elements = system.read_all(leader).await?;
    let replicas_differ = system.replicas_differ(leader, &elements).await?;
    Ok(Outcome {
        trials,
        log,
        elements,
        read_from: leader,
        replicas_differ,
    })
}

/// One trial: a lead-in of steady appends through a server that does not
/// lead (moving the client if it does), the strike, the recovery, the
/// catch-up. A pause or a cut is always lifted, even when the trial fails.
async fn one_trial<S: System>(
    system: &mut S,
    fault: Fault,
    number: usize,
    via: &mut usize,
    url_tx: &watch::Sender<String>,
    log: &Mutex<Log>,
    task: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Trial> {
    // The appends keep the group awake: its leader is known, once it
    // stopped moving.
    let mut leader = system.leader(*via).await?;
    for _ in 0..SETTLE_TRIES {
        tokio::time::sleep(SETTLED_FOR).await;
        let now = system.leader(*via).await?;
        if now == leader {
            break;
        }
        leader = now;
    }
    let began = Instant::now();
    if leader == *via {
        *via = (0..system.servers())
            .find(|i| *i != leader && system.running(*i))
            .context("no server but the leader runs")?;
        url_tx.send_replace(system.url(*via));
    }
    let via = *via;
    wait_ack(log, Instant::now(), Duration::from_secs(10), task)
        .await
        .with_context(|| format!("appends through server {via}"))?;
    tokio::time::sleep(LEAD_IN).await;
    // Strike right after an acknowledgement, while the client pauses: no
    // append is in flight.
    wait_ack(log, Instant::now(), Duration::from_secs(10), task)
        .await
        .with_context(|| format!("appends through server {via}"))?;
    match fault {
        Fault::Kill => system.kill(leader)?,
        Fault::Stop => system.signal(leader, "TERM")?,
        Fault::Pause => system.signal(leader, "STOP")?,
        Fault::Cut => system.net().context("no network to cut")?.cut(leader)?,
    }
    // Once the strike has landed (`kill` or `ip` has returned; a killed
    // process has been reaped): an append sent before this could still
    // have been acknowledged by the leader.
    let struck = Instant::now();
    let outcome = async {
        let (resumed, back) = match fault {
            Fault::Kill | Fault::Stop => {
                let (_, resumed) = wait_ack(log, struck, FAILOVER_DEADLINE, task).await?;
                if fault == Fault::Stop {
                    system.reap(leader).await?;
                }
                tokio::time::sleep(KILLED_FOR).await;
                let back = Instant::now();
                system
                    .restart(leader, via)
                    .await
                    .with_context(|| format!("restarting server {leader}"))?;
                (resumed, back)
            }
            Fault::Pause | Fault::Cut => {
                tokio::time::sleep_until((struck + DOWN_FOR).into()).await;
                let back = Instant::now();
                lift(system, fault, leader)?;
                let (_, resumed) = wait_ack(log, struck, FAILOVER_DEADLINE, task).await?;
                (resumed, back)
            }
        };
        guarded(system.wait_caught_up(via), task)
            .await
            .with_context(|| format!("server {leader} catching up"))?;
        let caught_up = Instant::now();
        let deposed = system.leader(via).await? != leader;
        anyhow::Ok((resumed, back, caught_up, deposed))
    }
    .await;
    let (resumed, back, caught_up, deposed) = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Never leave a server stopped or cut off behind an error.
            if let Err(again) = lift(system, fault, leader) {
                eprintln!("ending the {fault:?} of server {leader} after an error: {again:#}");
            }
            return Err(e.context(format!("after server {leader} was {}", fault.done())));
        }
    };
    Ok(Trial {
        fault,
        number,
        leader,
        via,
        began,
        struck,
        resumed,
        back,
        caught_up,
        deposed,
    })
}

/// Ends a pause (SIGCONT) or a cut (link up); nothing for a kill.
fn lift(system: &impl System, fault: Fault, i: usize) -> anyhow::Result<()> {
    match fault {
        Fault::Kill | Fault::Stop => Ok(()),
        Fault::Pause => system.signal(i, "CONT"),
        Fault::Cut => system.net().context("no network to heal")?.heal(i),
    }
}

/// Adds a system's figures, timelines and checks to the report; `peer`:
/// its checks are notes, not failures of the run.
fn record(report: &mut Report, who: &str, outcome: &Outcome, peer: bool) {
    let mut faults: Vec<Fault> = outcome.trials.iter().map(|t| t.fault).collect();
    faults.dedup();
    for fault in faults {
        let trials: Vec<&Trial> = outcome.trials.iter().filter(|t| t.fault == fault).collect();
        let case = case(who, fault);
        let (strike, back) = fault.words();
        let failovers: Vec<f64> = trials.iter().map(|t| ms(t.resumed - t.struck)).collect();
        let catch_ups: Vec<f64> = trials.iter().map(|t| ms(t.caught_up - t.back)).collect();
        let spikes: Vec<f64> = trials
            .iter()
            .map(|t| {
                outcome
                    .log
                    .acks
                    .iter()
                    .filter(|a| a.first >= t.began && a.first < t.caught_up)
                    .map(|a| ms(a.acked - a.first))
                    .fold(0.0, f64::max)
            })
            .collect();
        report.row(&case, "trials", trials.len() as f64, "");
        report.row(
            &case,
            "trials after which another server led",
            trials.iter().filter(|t| t.deposed).count() as f64,
            "",
        );
        let metric = format!("{strike} to next acknowledged append");
        report.row(&case, format!("{metric}, min"), min(&failovers), "ms");
        report.row(&case, format!("{metric}, median"), median(&failovers), "ms");
        report.row(&case, format!("{metric}, max"), max(&failovers), "ms");
        report.row(
            &case,
            format!("{back} to all 3 replicas caught up, median"),
            median(&catch_ups),
            "ms",
        );
        report.row(
            &case,
            "longest append in a trial, median",
            median(&spikes),
            "ms",
        );
        report.row(&case, "longest append in a trial, max", max(&spikes), "ms");
        if let Some(first) = trials.first() {
            report.timelines.push(timeline(who, first, &outcome.log));
        }
    }

    let log = &outcome.log;
    let case = format!("{who}, all trials");
    report.row(
        &case,
        "failed append attempts (retried)",
        log.errors.len() as f64,
        "",
    );
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, e) in &log.errors {
        *why.entry(e.as_str()).or_default() += 1;
    }
    let mut why: Vec<(&str, usize)> = why.into_iter().collect();
    why.sort_by_key(|w| std::cmp::Reverse(w.1));
    for (e, n) in why.iter().take(5) {
        report
            .notes
            .push(format!("{who}: {n} failed attempts: {e}"));
    }

    // Everything acknowledged is there, once, where it was acknowledged.
    let check = check(&outcome.elements, &log.acks);
    let case = format!(
        "{who}, whole log read from server {} (the leader)",
        outcome.read_from
    );
    report.row(&case, "acknowledged appends", log.acks.len() as f64, "");
    report.row(&case, "elements", outcome.elements.len() as f64, "");
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
        "retries answered as already stored",
        log.acks.iter().filter(|a| a.duplicate).count() as f64,
        "",
    );
    let mut problems = Vec::new();
    if !check.lost.is_empty() {
        problems.push(format!(
            "{} acknowledged appends lost or moved, first ones (producer seq, acknowledged #, found): {:?}",
            check.lost.len(),
            &check.lost[..check.lost.len().min(10)]
        ));
    }
    if check.duplicates > 0 {
        problems.push(format!("{} elements appended twice", check.duplicates));
    }
    if check.misnumbered > 0 {
        problems.push(format!(
            "{} elements not numbered densely from 1",
            check.misnumbered
        ));
    }
    if check.unacknowledged > 0 {
        problems.push(format!(
            "{} elements that no acknowledged append wrote",
            check.unacknowledged
        ));
    }
    match &outcome.replicas_differ {
        Some(differ) => problems.extend(differ.iter().cloned()),
        None => report.notes.push(format!(
            "{who}: that every replica holds the same log is not checked (only the leader is read)"
        )),
    }
    for p in problems {
        let p = format!("{who}: {p}");
        if peer {
            report.notes.push(p);
        } else {
            report.failures.push(p);
        }
    }
}

/// The first trial of a fault as a plot: each append's latency (first
/// attempt to acknowledgement) by when it was first sent, in seconds from
/// the strike, from [`LEAD_IN`] before it to the catch-up.
fn timeline(who: &str, trial: &Trial, log: &Log) -> Timeline {
    let from = trial.struck.checked_sub(LEAD_IN).unwrap_or(trial.began);
    let at = |t: Instant| {
        if t >= trial.struck {
            (t - trial.struck).as_secs_f64()
        } else {
            -(trial.struck - t).as_secs_f64()
        }
    };
    let points = log
        .acks
        .iter()
        .filter(|a| a.first >= from && a.first <= trial.caught_up)
        .map(|a| (at(a.first), ms(a.acked - a.first)))
        .collect();
    let (struck, back) = trial.fault.marks();
    Timeline {
        title: format!(
            "Failover timeline: {who}, leader {} (trial {})",
            trial.fault.done(),
            trial.number
        ),
        y_label: "ms".into(),
        series: vec![Series {
            name: "append latency (first attempt to ack)".into(),
            points,
        }],
        marks: vec![(0.0, struck.into()), (at(trial.back), back.into())],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::max).unwrap_or(0.0)
}

/// Appends [`payload`]s through the server at the URL `url` holds (the
/// producer reconnects when it changes) until `stop`, each one retried
/// until acknowledged, at most [`APPEND_DEADLINE`].
async fn appender(
    mut producer: impl Producer,
    mut url: watch::Receiver<String>,
    stop: watch::Receiver<bool>,
    log: Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    for pseq in 1u64.. {
        if *stop.borrow() {
            break;
        }
        let first = Instant::now();
        loop {
            let to = url.borrow_and_update().clone();
            let sent = Instant::now();
            let last =
                match tokio::time::timeout(ATTEMPT_TIMEOUT, producer.attempt(&to, pseq)).await {
                    Ok(Ok((seq, duplicate))) => {
                        lock(&log).acks.push(Ack {
                            pseq,
                            seq,
                            first,
                            sent,
                            acked: Instant::now(),
                            duplicate,
                        });
                        break;
                    }
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                };
            lock(&log).errors.push((Instant::now(), last.clone()));
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The error of an appending client that stopped on its own.
async fn stopped(task: &mut JoinHandle<anyhow::Result<()>>) -> anyhow::Error {
    match task.await {
        Ok(Ok(())) => anyhow!("the appending client stopped early"),
        Ok(Err(e)) => e.context("the appending client failed"),
        Err(e) => anyhow!("the appending client panicked: {e}"),
    }
}

/// Awaits `work`, failing early if the appending client stops.
async fn guarded<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    task: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        e = stopped(task) => Err(e),
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
            let log = lock(log);
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

/// woof: a [`Cluster`] and [`TOPIC`].
struct Woof {
    cluster: Cluster,
}

impl System for Woof {
    type Producer = WoofProducer;

    fn producer(&self, id: String) -> WoofProducer {
        WoofProducer { id, client: None }
    }

    fn servers(&self) -> usize {
        self.cluster.nodes.len()
    }

    fn running(&self, i: usize) -> bool {
        self.cluster.nodes[i].alive()
    }

    fn url(&self, i: usize) -> String {
        self.cluster.url(i).to_string()
    }

    fn net(&self) -> Option<&Net> {
        self.cluster.net()
    }

    async fn leader(&self, via: usize) -> anyhow::Result<usize> {
        self.cluster.leader(via, TOPIC).await
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.cluster.kill(i)
    }

    async fn reap(&mut self, i: usize) -> anyhow::Result<()> {
        self.cluster.reap(i).await
    }

    async fn restart(&mut self, i: usize, via: usize) -> anyhow::Result<()> {
        self.cluster.restart(i, via).await
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        self.cluster.signal(i, signal)
    }

    /// Caught up: every node's replica matching, all equal or all at least
    /// where the leader's log was one answer before.
    async fn wait_caught_up(&self, via: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        let peers: HashSet<&str> = self
            .cluster
            .nodes
            .iter()
            .map(|m| m.peer_id.as_str())
            .collect();
        let mut before: Option<u64> = None;
        loop {
            let last = match nodes::describe(self.cluster.url(via), TOPIC).await {
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
            if Instant::now() > deadline {
                bail!("replicas not caught up within {CATCH_UP_DEADLINE:?}; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn read_all(&self, from: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let elements = nodes::scan_all(self.cluster.url(from), TOPIC).await?;
        Ok(elements
            .into_iter()
            .map(|e| (e.seq, e.payload.to_vec()))
            .collect())
    }

    /// Every other node answers the same log (a follower may lag a
    /// heartbeat: each is given 10 s).
    async fn replicas_differ(
        &self,
        leader: usize,
        elements: &[(u64, Vec<u8>)],
    ) -> anyhow::Result<Option<Vec<String>>> {
        let mut differ = Vec::new();
        for i in (0..self.servers()).filter(|i| *i != leader) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let theirs = self.read_all(i).await?;
                if theirs == elements {
                    break;
                }
                if Instant::now() > deadline {
                    differ.push(format!(
                        "node {i} answers a different log than the leader's: {} elements, against {}",
                        theirs.len(),
                        elements.len()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(Some(differ))
    }

    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        self.cluster.explain(e)
    }
}

/// woof's client: gRPC appends as a producer (the producer sequence makes
/// a retry idempotent).
struct WoofProducer {
    id: String,
    /// The node's URL, and a client of it.
    client: Option<(String, Client)>,
}

impl Producer for WoofProducer {
    async fn attempt(&mut self, url: &str, pseq: u64) -> anyhow::Result<(u64, bool)> {
        if self.client.as_ref().is_none_or(|(u, _)| u != url) {
            self.client = Some((url.to_string(), nodes::connect(url).await?));
        }
        let (_, client) = self.client.as_mut().expect("connected above");
        let request = v1::AppendRequest {
            topic: TOPIC.into(),
            payload: payload(pseq).into_bytes().into(),
            producer: Some(v1::Producer {
                id: self.id.clone(),
                seq: pseq,
            }),
            handler: Default::default(),
        };
        match client.append(request).await {
            Ok(r) => Ok((r.get_ref().seq, r.get_ref().duplicate)),
            Err(s) => bail!("{:?}: {}", s.code(), s.message()),
        }
    }
}

/// JetStream: a [`JetStream`] cluster and its stream.
struct Nats {
    js: JetStream,
}

impl System for Nats {
    type Producer = NatsProducer;

    fn producer(&self, id: String) -> NatsProducer {
        NatsProducer { id, js: None }
    }

    fn servers(&self) -> usize {
        self.js.urls.len()
    }

    fn running(&self, i: usize) -> bool {
        self.js.running(i)
    }

    fn url(&self, i: usize) -> String {
        self.js.urls[i].clone()
    }

    fn net(&self) -> Option<&Net> {
        self.js.net()
    }

    async fn leader(&self, via: usize) -> anyhow::Result<usize> {
        self.js.leader(via).await
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.js.kill(i)
    }

    async fn reap(&mut self, i: usize) -> anyhow::Result<()> {
        self.js.reap(i).await
    }

    async fn restart(&mut self, i: usize, _via: usize) -> anyhow::Result<()> {
        self.js.restart(i).await
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        self.js.signal(i, signal)
    }

    async fn wait_caught_up(&self, via: usize) -> anyhow::Result<()> {
        self.js.wait_caught_up(via, CATCH_UP_DEADLINE).await
    }

    async fn read_all(&self, from: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let messages = self.js.read_all(from).await?;
        Ok(messages
            .into_iter()
            .map(|(seq, payload)| (seq, payload.to_vec()))
            .collect())
    }

    async fn replicas_differ(
        &self,
        _leader: usize,
        _elements: &[(u64, Vec<u8>)],
    ) -> anyhow::Result<Option<Vec<String>>> {
        Ok(None)
    }

    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        self.js.explain(e)
    }
}

/// JetStream's client: publishes with a `Nats-Msg-Id` of the producer and
/// its sequence (JetStream's dedupe makes a retry idempotent).
struct NatsProducer {
    id: String,
    /// The server's URL, and a JetStream context on a client of it.
    js: Option<(String, async_nats::jetstream::Context)>,
}

impl Producer for NatsProducer {
    async fn attempt(&mut self, url: &str, pseq: u64) -> anyhow::Result<(u64, bool)> {
        if self.js.as_ref().is_none_or(|(u, _)| u != url) {
            let client = nats::connect(url).await?;
            self.js = Some((url.to_string(), async_nats::jetstream::new(client)));
        }
        let (_, js) = self.js.as_ref().expect("connected above");
        let id = format!("{}-{pseq}", self.id);
        nats::publish_with_id(js, SUBJECT, &id, payload(pseq).into(), ATTEMPT_TIMEOUT).await
    }
}

struct Check {
    /// (producer seq, acknowledged number, payload found there).
    lost: Vec<(u64, u64, Option<String>)>,
    duplicates: usize,
    misnumbered: usize,
    unacknowledged: usize,
}

/// Compares the log's elements with what the client was told.
fn check(elements: &[(u64, Vec<u8>)], acks: &[Ack]) -> Check {
    let misnumbered = elements
        .iter()
        .enumerate()
        .filter(|(i, (seq, _))| *seq != *i as u64 + 1)
        .count();
    let by_seq: HashMap<u64, &[u8]> = elements.iter().map(|(s, p)| (*s, &p[..])).collect();
    let distinct: HashSet<&[u8]> = elements.iter().map(|(_, p)| &p[..]).collect();
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
