//! Between `woof.v1` messages and `woof_consensus` domain types.

use tonic::{Code, Status};
use woof_consensus::Error;
use woof_consensus::Start;
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
