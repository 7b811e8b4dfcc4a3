//! Between `woof.v1` messages and `woof_consensus` domain types.

use tonic::{Code, Status};
use woof_consensus::Error;
use woof_consensus::Start;
use woof_consensus::topic::handlers::{Code as Code_, From, Handler, HandlerSpec};
use woof_consensus::topic::{Element, Producer, TopicConfig};
use woof_proto::v1;

use crate::api::TopicView;

/// Every domain error gets the gRPC code the API promises.
pub fn status(err: Error) -> Status {
    let code = match &err {
        Error::InvalidName { .. } | Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::TopicNotFound(_) | Error::GroupWithoutTopic | Error::HandlerNotFound(_) => {
            Code::NotFound
        }
        Error::TopicExists(_) => Code::AlreadyExists,
        Error::OutOfRange { .. } | Error::FellBehind { .. } => Code::OutOfRange,
        Error::ProducerSeq { .. } => Code::FailedPrecondition,
        Error::LimitReached(_) => Code::ResourceExhausted,
        Error::Closed | Error::Storage(_) | Error::Network(_) => Code::Unavailable,
        Error::Corrupt(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// A node error as the client sees it: topic errors keep their codes.
pub fn node_status(err: crate::Error) -> Status {
    use crate::Error as E;
    match err {
        E::Log(e) => status(e),
        E::Rpc(s) => s,
        E::Usage(m) | E::Config { reason: m, .. } => Status::invalid_argument(m),
        e @ (E::Overlay(_) | E::Connect { .. }) => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

pub fn topic_info(view: TopicView) -> v1::TopicInfo {
    let TopicView {
        info,
        replicas,
        leader,
        commit_index,
        progress,
    } = view;
    v1::TopicInfo {
        name: info.meta.name.to_string(),
        config: Some(v1::TopicConfig {
            element_max_bytes: info.meta.config.element_max_bytes,
            history: info.meta.config.history,
        }),
        first_seq: info.range.first,
        last_seq: info.range.last,
        created_at_ms: info.meta.created_at_ms,
        replication: info.meta.placement.replication,
        replica_constraint: info.meta.placement.constraint.unwrap_or_default(),
        replicas,
        leader: leader.unwrap_or_default(),
        commit_index,
        progress: progress
            .into_iter()
            .map(|(peer, matched_index)| v1::ReplicaProgress {
                peer,
                matched_index,
            })
            .collect(),
    }
}

pub fn element(e: Element) -> v1::Element {
    v1::Element {
        seq: e.seq,
        payload: e.payload,
        append_time_ms: e.append_time_ms,
        cause: e.cause.map(cause),
    }
}

pub fn cause(c: woof_consensus::topic::Cause) -> v1::Cause {
    v1::Cause {
        topic: c.topic,
        seq: c.seq,
        handler: c.handler,
        node: c.node,
        time_ms: c.time_ms,
    }
}

/// A causal trace as the API shows it.
pub fn trace(t: crate::api::Trace) -> v1::TraceResponse {
    let step = |s: crate::api::Step, parent: Option<usize>, depth: u32| v1::TraceStep {
        element: Some(v1::Element {
            seq: s.seq,
            payload: s.preview,
            append_time_ms: s.append_time_ms,
            cause: s.cause.map(cause),
        }),
        topic: s.topic,
        parent: parent.map_or(-1, |p| p as i64),
        depth,
    };
    v1::TraceResponse {
        element: Some(step(t.element, None, 0)),
        upstream: t.upstream.into_iter().map(|s| step(s, None, 0)).collect(),
        upstream_gone: t.upstream_gone.unwrap_or_default(),
        downstream: t
            .downstream
            .into_iter()
            .map(|e| step(e.step, e.parent, e.depth))
            .collect(),
        truncated: t.truncated,
    }
}

pub fn config(c: Option<v1::TopicConfig>) -> Result<TopicConfig, Status> {
    let c = c.unwrap_or_default();
    TopicConfig::from_requested(c.element_max_bytes, c.history).map_err(status)
}

pub fn producer(p: Option<v1::Producer>) -> Result<Option<Producer>, Status> {
    p.map(|p| Producer::from_client(p.id, p.seq).map_err(status))
        .transpose()
}

pub fn start(s: Option<v1::subscribe_request::Start>) -> Start {
    use v1::subscribe_request::Start as S;
    match s {
        Some(S::FromSeq(seq)) => Start::Seq(seq),
        Some(S::Earliest(_)) => Start::Earliest,
        Some(S::Latest(_)) | None => Start::Latest,
    }
}

/// A handler as the API shows it; `last` is its topic's last sequence
/// number, for the lag.
pub fn handler(topic: &str, h: &Handler, last: u64, runs_on: &[String]) -> v1::Handler {
    // Placed on every matching node: each placed node's instance (those
    // without progress yet start after `h.done`), and the ones that ran
    // before; the handler is as far as the slowest placed one.
    let mut instances: Vec<v1::HandlerInstance> = Vec::new();
    if h.spec.per_node {
        let nodes: std::collections::BTreeSet<&String> =
            runs_on.iter().chain(h.instances.keys()).collect();
        for node in nodes {
            let done = h.done_by(Some(node));
            instances.push(v1::HandlerInstance {
                node: node.clone(),
                done,
                lag: last.saturating_sub(done),
                placed: runs_on.contains(node),
            });
        }
    }
    let done = instances
        .iter()
        .filter(|i| i.placed)
        .map(|i| i.done)
        .min()
        .unwrap_or(h.done);
    let code = match &h.spec.code {
        Code_::Native(n) => v1::handler::Code::Native(n.clone()),
        Code_::Python(p) => v1::handler::Code::Python(p.clone()),
    };
    v1::Handler {
        topic: topic.to_string(),
        name: h.spec.name.clone(),
        code: Some(code),
        placement: h.spec.placement.clone(),
        config: h.spec.config.clone(),
        version: h.version,
        takes_over_at: h.takes_over_at,
        done,
        lag: last.saturating_sub(done),
        // A parked handler runs nowhere.
        runs_on: if h.parked.is_some() {
            String::new()
        } else {
            runs_on.join(",")
        },
        time_budget_ms: h.spec.time_budget_ms,
        memory_mib: h.spec.memory_mib,
        outputs: h.outputs.clone(),
        on_demand: h.spec.on_demand,
        instances,
        parked_at: h.parked.as_ref().map_or(0, |p| p.seq),
        parked_error: h
            .parked
            .as_ref()
            .map(|p| p.error.clone())
            .unwrap_or_default(),
    }
}

/// A handler's records on node `node`.
pub fn handler_logs(node: &str, book: crate::handlers::journal::Book) -> v1::HandlerLogsResponse {
    v1::HandlerLogsResponse {
        node: node.to_string(),
        invocations: book
            .recent
            .into_iter()
            .map(|i| v1::Invocation {
                id: i.id,
                seq: i.seq,
                at_ms: i.at_ms,
                dispatch_us: i.dispatch_us,
                duration_us: i.duration_us,
                outcome: i.outcome.as_str().to_string(),
                error: i.error,
                logs: i.logs,
                ran_on: i.ran_on,
            })
            .collect(),
        runs: book.runs,
        errors: book.errors,
        timeouts: book.timeouts,
    }
}

/// The topic and spec a deploy or update carries.
pub fn handler_spec(h: Option<v1::Handler>) -> Result<(String, HandlerSpec), Status> {
    let h = h.ok_or_else(|| Status::invalid_argument("the request names no handler"))?;
    let code = match h.code {
        Some(v1::handler::Code::Native(n)) => Code_::Native(n),
        Some(v1::handler::Code::Python(p)) => Code_::Python(p),
        None => {
            return Err(Status::invalid_argument(
                "a handler needs native or python code",
            ));
        }
    };
    let spec = HandlerSpec {
        name: h.name,
        code,
        placement: h.placement,
        config: h.config,
        time_budget_ms: h.time_budget_ms,
        memory_mib: h.memory_mib,
        on_demand: h.on_demand,
        // The node sets it from the placement.
        per_node: false,
    };
    Ok((h.topic, spec))
}

/// Where a deploy starts.
pub fn from(from_seq: u64, from_earliest: bool) -> From {
    match (from_earliest, from_seq) {
        (true, _) => From::Earliest,
        (false, 0) => From::Next,
        (false, s) => From::Seq(s),
    }
}

/// A registered device, without its key.
pub fn device(d: &crate::devices::registry::Device) -> v1::Device {
    v1::Device {
        id: d.id.clone(),
        topics: d.topics.iter().map(|p| p.as_str().to_string()).collect(),
        subscribe: d.subscribe.iter().map(|p| p.as_str().to_string()).collect(),
        added_ms: d.added_ms,
        keyed_ms: d.keyed_ms,
    }
}

/// A device just added or given a new key, with that key.
pub fn added_device(d: &crate::devices::registry::Device) -> v1::AddDeviceResponse {
    v1::AddDeviceResponse {
        device: Some(device(d)),
        key: crate::devices::registry::key_hex(&d.key),
    }
}
