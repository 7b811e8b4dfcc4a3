//! `handlers`: what a handler adds to an append, on a 3-node cluster.
//!
//! A handler copies every element of `in` to `out`: the native `forward`,
//! then the same in Python (`ctx.append(to, payload)`, run in its sandboxed
//! worker process); both topics have the same replication (1, then 3).
//! Cases:
//! - **append to output**: one appender at `in`'s leader, 200 appends a
//!   second; a subscriber to `out` on the same node. `out` is made so that
//!   its leader is on `in`'s leader's node (where the handler runs), and
//!   in one more case (native, 1 replica) on another node. Latency from the
//!   append being sent to its copy reaching the subscriber: the input's
//!   commit, the handler's dispatch, the output's commit (on `out`'s
//!   leader, which with one replica may be another node) and the delivery.
//!   Also the **dispatch**: from the element's commit on the handler's node
//!   to the handler starting, as that node recorded it for the last 1,000
//!   invocations (`woof handler logs`).
//! - **throughput**: [`BURST`] elements appended in batches of 1,000, and
//!   the time until the handler has finished all of them (its recorded
//!   progress), as invocations a second. Each invocation commits one output.
//!
//! - **placed off the replicas**: the native copy with one replica and
//!   placement `~replica()`, so it runs on a node that holds no replica of
//!   `in` and follows it over the overlay: append to output, and dispatch
//!   (timed there from the leader's append time, in whole ms).
//! - **a chain of three handlers** (`in` -> `a` -> `b` -> `out`, 3
//!   replicas each), native then Python: append to `in` to the third
//!   handler's output reaching a subscriber of `out`.
//!
//! Every case checks that `out` ends up holding exactly the copies, in
//! order.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use woof_proto::v1;

use crate::nodes::{self, Cluster};
use crate::report::{Report, probe_machine};
use crate::subscribe::{subscriber, summarize};

/// Appends a second in the latency case.
const APPENDS_PER_SEC: u64 = 200;
/// Elements in the throughput case: enough that the up to 50 ms before the
/// handler records its progress, and the 20 ms between looks at it, weigh
/// little (with 20,000 they were a third of a run at 100,000 a second).
const BURST: u64 = 200_000;
/// Elements per batch in the throughput case.
const BATCH: u64 = 1_000;

pub async fn run(woof: &Path, quick: bool) -> anyhow::Result<Report> {
    let secs = if quick { 3 } else { 20 };
    let burst = if quick { BURST / 10 } else { BURST };
    let cluster = Cluster::start(woof, 3).await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    for replication in [1, 3] {
        for kind in [Kind::Native, Kind::Python] {
            let run = cases(&cluster, &mut report, kind, replication, false, secs, burst);
            if let Err(e) = run.await {
                return Err(cluster.explain(e));
            }
        }
    }
    // The same, with the output's leader on another node.
    let run = cases(&cluster, &mut report, Kind::Native, 1, true, secs, burst);
    if let Err(e) = run.await {
        return Err(cluster.explain(e));
    }
    if let Err(e) = off_replicas(&cluster, &mut report, secs).await {
        return Err(cluster.explain(e));
    }
    for kind in [Kind::Native, Kind::Python] {
        if let Err(e) = chain(&cluster, &mut report, kind, secs).await {
            return Err(cluster.explain(e));
        }
    }
    Ok(report)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Native,
    Python,
}

const PYTHON_FORWARD: &str =
    "def handle(ctx, seq, payload):\n    ctx.append(ctx.config['to'], payload)\n";

/// Deploys a copy from `input` to `output`, placed by `placement`.
async fn deploy_copy(
    url: &str,
    kind: Kind,
    name: &str,
    input: &str,
    output: &str,
    placement: &str,
) -> anyhow::Result<()> {
    let mut c = nodes::connect(url).await?;
    nodes::call(
        format!("{url}: deploy {name} on {input}"),
        c.deploy_handler(v1::DeployHandlerRequest {
            handler: Some(v1::Handler {
                topic: input.to_string(),
                name: name.into(),
                code: Some(match kind {
                    Kind::Native => v1::handler::Code::Native("forward".into()),
                    Kind::Python => v1::handler::Code::Python(PYTHON_FORWARD.into()),
                }),
                placement: placement.into(),
                config: format!(r#"{{"to": "{output}"}}"#),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await?;
    Ok(())
}

/// Appends to `input` at `url`, [`APPENDS_PER_SEC`] for `secs`, each
/// payload the time it was sent, and records as `case` when each reached
/// a subscriber of `output` there. Checks `output` then holds them all,
/// in order, once. The number appended.
async fn append_to_output(
    report: &mut Report,
    case: &str,
    url: &str,
    input: &str,
    output: &str,
    secs: u64,
) -> anyhow::Result<u64> {
    let mut appender = nodes::connect(url).await?;
    let epoch = Instant::now();
    let count = secs * APPENDS_PER_SEC;
    let watcher = subscriber(url, output, 1, count, epoch).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / APPENDS_PER_SEC));
    for i in 0..count {
        tick.tick().await;
        let sent = epoch.elapsed().as_nanos() as u64;
        nodes::call(
            format!("{url}: append {i} to {input}"),
            appender.append(v1::AppendRequest {
                topic: input.to_string(),
                payload: bytes::Bytes::copy_from_slice(&sent.to_le_bytes()),
                producer: None,
                handler: Default::default(),
            }),
        )
        .await?;
    }
    summarize(report, case, vec![watcher.await?])?;
    Ok(count)
}

/// Records the p50 and p99 of `name`'s dispatch on `input`, as the node
/// that runs it logged its last 1,000 invocations.
async fn dispatch(
    report: &mut Report,
    case: &str,
    url: &str,
    input: &str,
    name: &str,
) -> anyhow::Result<()> {
    let mut c = nodes::connect(url).await?;
    let logs = nodes::call(
        format!("{url}: logs of {input}/{name}"),
        c.handler_logs(v1::HandlerLogsRequest {
            topic: input.to_string(),
            name: name.into(),
            limit: 1000,
            ..Default::default()
        }),
    )
    .await?;
    let mut dispatch: Vec<u64> = logs
        .invocations
        .iter()
        .filter(|i| i.outcome == "ok")
        .map(|i| i.dispatch_us)
        .collect();
    dispatch.sort_unstable();
    if dispatch.is_empty() {
        bail!("{case}: the handler's node recorded no invocations");
    }
    let at = |q: f64| dispatch[((dispatch.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    report.row(case, "p50", at(0.5), "ms");
    report.row(case, "p99", at(0.99), "ms");
    Ok(())
}

/// Checks that `output` holds exactly `input`'s payloads, in order.
async fn check_copies(
    report: &mut Report,
    case: &str,
    url: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<()> {
    let copies = nodes::scan_all(url, output).await?;
    let originals = nodes::scan_all(url, input).await?;
    let payloads = |es: &[v1::Element]| es.iter().map(|e| e.payload.clone()).collect::<Vec<_>>();
    if payloads(&copies) != payloads(&originals) {
        report.failures.push(format!(
            "{case}: {output} holds {} elements; expected the {} of {input}, in order, once",
            copies.len(),
            originals.len()
        ));
    }
    Ok(())
}

/// The native copy with one replica, run on a node without a replica.
async fn off_replicas(cluster: &Cluster, report: &mut Report, secs: u64) -> anyhow::Result<()> {
    let (input, output) = ("bench/off-in", "bench/off-out");
    let url0 = cluster.url(0);
    nodes::create(url0, input, 1).await?;
    nodes::create(url0, output, 1).await?;
    deploy_copy(url0, Kind::Native, "fwd", input, output, "~replica()").await?;
    let url = cluster.url(cluster.leader(0, input).await?);
    let case = "native forward, 1 replica, placed off it: append to output at a subscriber";
    append_to_output(report, case, url, input, output, secs).await?;
    let case = "native forward, 1 replica, placed off it: dispatch, append to handler start";
    dispatch(report, case, url, input, "fwd").await?;
    let case = "native forward, 1 replica, placed off it";
    check_copies(report, case, url, input, output).await
}

/// Three copies in a row, 3 replicas each: append to the last output.
async fn chain(
    cluster: &Cluster,
    report: &mut Report,
    kind: Kind,
    secs: u64,
) -> anyhow::Result<()> {
    let label = match kind {
        Kind::Native => "native",
        Kind::Python => "python",
    };
    let topics: Vec<String> = ["in", "a", "b", "out"]
        .iter()
        .map(|t| format!("bench/chain-{label}-{t}"))
        .collect();
    let url0 = cluster.url(0);
    for t in &topics {
        nodes::create(url0, t, 3).await?;
    }
    for (i, pair) in topics.windows(2).enumerate() {
        deploy_copy(
            url0,
            kind,
            &format!("step{}", i + 1),
            &pair[0],
            &pair[1],
            "",
        )
        .await?;
    }
    let url = cluster.url(cluster.leader(0, &topics[0]).await?);
    let case = format!("{label} chain of 3 handlers, 3 replicas: append to last output");
    append_to_output(report, &case, url, &topics[0], &topics[3], secs).await?;
    check_copies(report, &case, url, &topics[0], &topics[3]).await
}

/// Creates a topic named `base` (or, if its leader is not where it should
/// be, `base-2`, `base-3`, ...) whose leader is where `at` says. Where a topic's leader lands
/// depends on the nodes' random peer ids and on its election, so without
/// this an output's leader is on the handler's node in one run and not in
/// the next, and the figures swing with it (an output appended on another
/// node costs a round trip over the overlay). The name it got.
async fn create_led_by(
    cluster: &Cluster,
    base: &str,
    replication: u32,
    at: Led,
) -> anyhow::Result<String> {
    for attempt in 1..=CREATE_TRIES {
        let name = match attempt {
            1 => base.to_string(),
            n => format!("{base}-{n}"),
        };
        nodes::create(cluster.url(0), &name, replication).await?;
        let leader = cluster.leader(0, &name).await?;
        let fits = match at {
            Led::By(node) => leader == node,
            Led::NotBy(node) => leader != node,
        };
        if fits {
            return Ok(name);
        }
    }
    bail!("{base}: no leader where wanted ({at:?}) in {CREATE_TRIES} topics")
}

/// Where [`create_led_by`] wants a topic's leader.
#[derive(Debug, Clone, Copy)]
enum Led {
    By(usize),
    NotBy(usize),
}

/// Topics [`create_led_by`] tries.
const CREATE_TRIES: u32 = 24;

async fn cases(
    cluster: &Cluster,
    report: &mut Report,
    kind: Kind,
    replication: u32,
    far: bool,
    secs: u64,
    burst: u64,
) -> anyhow::Result<()> {
    let kind_label = match kind {
        Kind::Native => "native",
        Kind::Python => "python",
    };
    let (label, tag) = match far {
        false => (kind_label.to_string(), kind_label.to_string()),
        true => (
            format!("{kind_label} (output's leader on another node)"),
            format!("{kind_label}-far"),
        ),
    };
    let (input, output) = (
        format!("bench/{tag}-in-r{replication}"),
        format!("bench/{tag}-out-r{replication}"),
    );
    let url0 = cluster.url(0);
    nodes::create(url0, &input, replication).await?;
    let leader = cluster.leader(0, &input).await?;
    let at = match far {
        false => Led::By(leader),
        true => Led::NotBy(leader),
    };
    let output = create_led_by(cluster, &output, replication, at).await?;
    deploy_copy(url0, kind, "fwd", &input, &output, "").await?;
    let url = cluster.url(leader);
    let mut appender = nodes::connect(url).await?;

    // Latency: every payload is the time it was sent.
    let case =
        format!("{label} forward, {replication} replica(s): append to output at a subscriber");
    let count = append_to_output(report, &case, url, &input, &output, secs).await?;
    let case =
        format!("{label} forward, {replication} replica(s): dispatch, commit to handler start");
    dispatch(report, &case, url, &input, "fwd").await?;

    // Throughput: a burst, and the time until the handler finished it.
    let case = format!(
        "{label} forward, {replication} replica(s): {burst} elements in batches of {BATCH}"
    );
    let started = Instant::now();
    for b in 0..burst / BATCH {
        nodes::call(
            format!("{url}: batch {b} to {input}"),
            appender.append_batch(v1::AppendBatchRequest {
                topic: input.clone(),
                payloads: (0..BATCH).map(|i| format!("b{b}-{i}").into()).collect(),
                producer: None,
                handler: String::new(),
            }),
        )
        .await?;
    }
    let last = count + burst;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let handlers = nodes::call(
            format!("{url}: handlers of {input}"),
            appender.list_handlers(v1::ListHandlersRequest {
                topic: input.clone(),
            }),
        )
        .await?
        .handlers;
        let done = handlers.first().map_or(0, |h| h.done);
        if done >= last {
            break;
        }
        if Instant::now() > deadline {
            bail!("{case}: the handler finished {done} of {last} in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.row(&case, "invocations", burst as f64 / elapsed, "per s");
    // Deployed before the first append: the copies are the input, whole.
    check_copies(report, &case, url, &input, &output).await?;
    Ok(())
}
