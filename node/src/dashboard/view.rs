//! What the dashboard shows, built from the API's own answers: the cluster
//! status, each topic's progress per replica, the handlers and devices;
//! and what a topic's tail sends. Pure: the server asks, this arranges.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use woof_proto::v1;

/// Topics a view lists; the rest are counted in [`View::topics_total`].
pub const TOPICS_SHOWN_MAX: usize = 500;
/// Handlers a view lists.
pub const HANDLERS_SHOWN_MAX: usize = 500;
/// Devices a view lists.
pub const DEVICES_SHOWN_MAX: usize = 500;
/// Bytes of an element's payload a tail sends.
pub const PAYLOAD_SHOWN_BYTES: usize = 256;

/// One refresh of the dashboard.
#[derive(Debug, Clone, Serialize, Default)]
pub struct View {
    /// The node serving the dashboard (its peer id; empty if standalone).
    pub node: String,
    /// When the view was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub nodes: Vec<Node>,
    pub topics: Vec<Topic>,
    /// Topics in the cluster that the token may read, listed or not.
    pub topics_total: usize,
    pub handlers: Vec<Handler>,
    pub devices: Vec<Device>,
    /// Why devices are not shown (the token does not allow it, say).
    pub devices_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub peer: String,
    pub tier: String,
    /// `key=value`, in key order.
    pub attrs: Vec<String>,
    pub capabilities: Vec<String>,
    /// `alive`, `suspected` or `gone`.
    pub state: String,
    pub silent_ms: u64,
    pub grpc_addr: String,
    /// The node serving the dashboard.
    pub local: bool,
    /// Its load: topics it holds a replica of, and those it leads.
    pub replicas: usize,
    pub leads: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Topic {
    pub name: String,
    pub replication: u32,
    pub replicas: Vec<String>,
    /// Empty when no leader answered.
    pub leader: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub commit_index: u64,
    /// How far each replica's log is behind the leader's commit index, in
    /// log entries (as the leader knows it).
    pub lag: Vec<Lag>,
    /// Elements a second since the previous view of this stream (0 in the
    /// first).
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub peer: String,
    pub behind: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Handler {
    pub topic: String,
    pub name: String,
    /// `native BUILTIN` or `python`.
    pub code: String,
    pub placement: String,
    pub runs_on: String,
    pub done: u64,
    pub lag: u64,
    /// Set when the handler is parked.
    pub parked: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub topics: Vec<String>,
    pub keyed_ms: u64,
}

/// One element of a topic's tail.
#[derive(Debug, Clone, Serialize)]
pub struct Element {
    pub seq: u64,
    pub time_ms: u64,
    /// The payload's first [`PAYLOAD_SHOWN_BYTES`]: as text when they are
    /// UTF-8, else in hex.
    pub text: String,
    pub hex: bool,
    pub bytes: usize,
    /// `topic#seq by handler`, if a handler appended it.
    pub cause: Option<String>,
}

impl View {
    /// Arranges a cluster status; `rates` remembers the last counts seen.
    pub fn new(status: v1::ClusterStatusResponse, rates: &mut Rates) -> Self {
        let mut nodes: Vec<Node> = status.nodes.into_iter().map(node).collect();
        let topics_total = status.topics.len();
        for t in &status.topics {
            for n in nodes.iter_mut() {
                if t.replicas.contains(&n.peer) {
                    n.replicas += 1;
                }
                if !t.leader.is_empty() && t.leader == n.peer {
                    n.leads += 1;
                }
            }
        }
        let now = Instant::now();
        let topics = status
            .topics
            .into_iter()
            .take(TOPICS_SHOWN_MAX)
            .map(|t| {
                let rate = rates.rate(&t.name, t.last_seq, now);
                topic(t, rate)
            })
            .collect();
        rates.forget_older_than(now);
        Self {
            node: nodes
                .iter()
                .find(|n| n.local)
                .map(|n| n.peer.clone())
                .unwrap_or_default(),
            time_ms: now_ms(),
            nodes,
            topics,
            topics_total,
            ..Self::default()
        }
    }
}

fn node(n: v1::NodeStatus) -> Node {
    let mut attrs: Vec<String> = n.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    attrs.sort();
    Node {
        peer: n.peer_id,
        tier: n.tier,
        attrs,
        capabilities: n.capabilities,
        state: n.state,
        silent_ms: n.silent_ms,
        grpc_addr: n.grpc_addr,
        local: n.local,
        replicas: 0,
        leads: 0,
    }
}

fn topic(t: v1::TopicInfo, rate: f64) -> Topic {
    let lag = t
        .progress
        .iter()
        .map(|p| Lag {
            peer: p.peer.clone(),
            behind: t.commit_index.saturating_sub(p.matched_index),
        })
        .collect();
    Topic {
        name: t.name,
        replication: t.replication,
        replicas: t.replicas,
        leader: t.leader,
        first_seq: t.first_seq,
        last_seq: t.last_seq,
        commit_index: t.commit_index,
        lag,
        rate,
    }
}

/// A handler as the dashboard lists it.
pub fn handler(h: v1::Handler) -> Handler {
    let code = match h.code {
        Some(v1::handler::Code::Native(name)) => format!("native {name}"),
        Some(v1::handler::Code::Python(_)) => "python".into(),
        None => String::new(),
    };
    Handler {
        topic: h.topic,
        name: h.name,
        code,
        placement: if h.placement.is_empty() {
            "leader()".into()
        } else {
            h.placement
        },
        runs_on: h.runs_on,
        done: h.done,
        lag: h.lag,
        parked: (h.parked_at != 0).then(|| format!("at {}: {}", h.parked_at, h.parked_error)),
    }
}

/// A device as the dashboard lists it (never its key).
pub fn device(d: v1::Device) -> Device {
    Device {
        id: d.id,
        topics: d.topics,
        keyed_ms: d.keyed_ms,
    }
}

/// An element of a tail.
pub fn element(e: v1::Element) -> Element {
    let shown = &e.payload[..e.payload.len().min(PAYLOAD_SHOWN_BYTES)];
    let (text, hex) = match std::str::from_utf8(shown) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (crate::auth::hex(shown), true),
    };
    Element {
        seq: e.seq,
        time_ms: e.append_time_ms,
        text,
        hex,
        bytes: e.payload.len(),
        cause: e
            .cause
            .map(|c| format!("{}#{} by {}", c.topic, c.seq, c.handler)),
    }
}

/// Each topic's last sequence number at the previous view of a stream.
#[derive(Debug, Default)]
pub struct Rates {
    seen: HashMap<String, (u64, Instant)>,
}

impl Rates {
    /// Elements a second since `name` was last seen; 0 the first time.
    fn rate(&mut self, name: &str, last_seq: u64, now: Instant) -> f64 {
        let rate = match self.seen.get(name) {
            Some(&(before, at)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    last_seq.saturating_sub(before) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.seen.insert(name.to_string(), (last_seq, now));
        rate
    }

    /// Drops the topics this view did not list (deleted, or past the cap).
    fn forget_older_than(&mut self, now: Instant) {
        self.seen.retain(|_, (_, at)| *at >= now);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last_seq: u64) -> v1::ClusterStatusResponse {
        v1::ClusterStatusResponse {
            nodes: vec![
                v1::NodeStatus {
                    peer_id: "a".into(),
                    state: "alive".into(),
                    local: true,
                    ..Default::default()
                },
                v1::NodeStatus {
                    peer_id: "b".into(),
                    state: "suspected".into(),
                    ..Default::default()
                },
            ],
            topics: vec![v1::TopicInfo {
                name: "t".into(),
                last_seq,
                replicas: vec!["a".into(), "b".into()],
                leader: "a".into(),
                commit_index: 10,
                progress: vec![
                    v1::ReplicaProgress {
                        peer: "a".into(),
                        matched_index: 10,
                    },
                    v1::ReplicaProgress {
                        peer: "b".into(),
                        matched_index: 4,
                    },
                ],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_view_counts_each_nodes_load_and_each_replicas_lag() {
        let view = View::new(status(5), &mut Rates::default());
        assert_eq!(view.node, "a");
        assert_eq!((view.nodes[0].replicas, view.nodes[0].leads), (1, 1));
        assert_eq!((view.nodes[1].replicas, view.nodes[1].leads), (1, 0));
        let lag: Vec<(&str, u64)> = view.topics[0]
            .lag
            .iter()
            .map(|l| (l.peer.as_str(), l.behind))
            .collect();
        assert_eq!(lag, [("a", 0), ("b", 6)]);
        assert_eq!(view.topics[0].rate, 0.0, "no rate in a first view");
    }

    #[test]
    fn a_rate_is_the_elements_since_the_previous_view() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        assert_eq!(rates.rate("t", 100, t0), 0.0);
        let rate = rates.rate("t", 150, t0 + std::time::Duration::from_millis(500));
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        rates.forget_older_than(t0 + std::time::Duration::from_secs(1));
        assert!(rates.seen.is_empty());
    }

    #[test]
    fn a_tail_shows_text_as_text_and_binary_in_hex_cut_short() {
        let text = element(v1::Element {
            seq: 3,
            payload: bytes::Bytes::from_static(b"{\"t\": 21.5}"),
            ..Default::default()
        });
        assert_eq!((text.text.as_str(), text.hex), ("{\"t\": 21.5}", false));
        let binary = element(v1::Element {
            payload: vec![0xff; 1000].into(),
            ..Default::default()
        });
        assert!(binary.hex);
        assert_eq!(binary.text.len(), PAYLOAD_SHOWN_BYTES * 2);
        assert_eq!(binary.bytes, 1000);
    }
}
