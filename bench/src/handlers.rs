//! `handlers`: what a handler adds to an append, on a 3-node cluster.
//!
//! A handler copies every element of `in` to `out`: the native `forward`,
//! then the same in Python (`ctx.append(to, payload)`, run in its sandboxed
//! worker process); both topics have the same replication (1, then 3).
//! Cases:
//! - **append to output**: one appender at `in`'s leader, 200 appends a
//!   second; a subscriber to `out` on the same node. Latency from the
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
/// Elements in the throughput case.
const BURST: u64 = 20_000;
/// Elements per batch in the throughput case.
const BATCH: u64 = 1_000;

pub async fn run(woof: &Path, quick: bool) -> anyhow::Result<Report> {
    let secs = if quick { 3 } else { 20 };
    let burst = if quick { BURST / 10 } else { BURST };
    let cluster = Cluster::start(woof, 3).await?;
    let mut report = Report::new(probe_machine(cluster.dir.path())?);
    for replication in [1, 3] {
        for kind in [Kind::Native, Kind::Python] {
            if let Err(e) = cases(&cluster, &mut report, kind, replication, secs, burst).await {
                return Err(cluster.explain(e));
            }
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

async fn cases(
    cluster: &Cluster,
    report: &mut Report,
    kind: Kind,
    replication: u32,
    secs: u64,
    burst: u64,
) -> anyhow::Result<()> {
    let label = match kind {
        Kind::Native => "native",
        Kind::Python => "python",
    };
    let (input, output) = (
        format!("bench/{label}-in-r{replication}"),
        format!("bench/{label}-out-r{replication}"),
    );
    let url0 = cluster.url(0);
    nodes::create(url0, &input, replication).await?;
    nodes::create(url0, &output, replication).await?;
    let mut c = nodes::connect(url0).await?;
    nodes::call(
        format!("{url0}: deploy forward on {input}"),
        c.deploy_handler(v1::DeployHandlerRequest {
            handler: Some(v1::Handler {
                topic: input.clone(),
                name: "fwd".into(),
                code: Some(match kind {
                    Kind::Native => v1::handler::Code::Native("forward".into()),
                    Kind::Python => v1::handler::Code::Python(PYTHON_FORWARD.into()),
                }),
                config: format!(r#"{{"to": "{output}"}}"#),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await?;
    let leader = cluster.leader(0, &input).await?;
    let url = cluster.url(leader);
    let mut appender = nodes::connect(url).await?;

    // Latency: every payload is the time it was sent.
    let case =
        format!("{label} forward, {replication} replica(s): append to output at a subscriber");
    let epoch = Instant::now();
    let count = secs * APPENDS_PER_SEC;
    let watcher = subscriber(url, &output, 1, count, epoch).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / APPENDS_PER_SEC));
    for i in 0..count {
        tick.tick().await;
        let sent = epoch.elapsed().as_nanos() as u64;
        nodes::call(
            format!("{url}: append {i} to {input}"),
            appender.append(v1::AppendRequest {
                topic: input.clone(),
                payload: bytes::Bytes::copy_from_slice(&sent.to_le_bytes()),
                producer: None,
                handler: Default::default(),
            }),
        )
        .await?;
    }
    summarize(report, &case, vec![watcher.await?])?;
    let logs = nodes::call(
        format!("{url}: logs of {input}/fwd"),
        appender.handler_logs(v1::HandlerLogsRequest {
            topic: input.clone(),
            name: "fwd".into(),
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
    let case =
        format!("{label} forward, {replication} replica(s): dispatch, commit to handler start");
    report.row(&case, "p50", at(0.5), "ms");
    report.row(&case, "p99", at(0.99), "ms");

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
    let copies = nodes::scan_all(url, &output).await?;
    let originals = nodes::scan_all(url, &input).await?;
    let payloads = |es: &[v1::Element]| es.iter().map(|e| e.payload.clone()).collect::<Vec<_>>();
    // Deployed before the first append: the copies are the input, whole.
    if copies.len() as u64 != last || payloads(&copies) != payloads(&originals) {
        report.failures.push(format!(
            "{case}: {output} holds {} elements; expected the {last} of {input}, in order, once",
            copies.len()
        ));
    }
    Ok(())
}
