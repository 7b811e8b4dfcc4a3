//! How the CLI prints: plain text by default, one JSON object per line with
//! `--json`. Payloads that are UTF-8 print as text; others as hex in text
//! mode and as `payload_hex` in JSON.

use std::io::Write;

use serde_json::{Value, json};
use woof_proto::v1;

/// Where and how results are printed.
pub struct Output {
    json: bool,
    out: Box<dyn Write + Send>,
}

impl Output {
    pub fn stdout(json: bool) -> Self {
        Self {
            json,
            out: Box::new(std::io::stdout()),
        }
    }

    fn line(&mut self, text: &str) {
        // A closed pipe (`woof tail t | head`) is the reader's choice, not an error.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn json(&mut self, value: Value) {
        self.line(&value.to_string());
    }

    pub fn topic(&mut self, t: &v1::TopicInfo, verb: &str) {
        let c = t.config.unwrap_or_default();
        if self.json {
            self.json(topic_json(t));
        } else {
            let verb = if verb.is_empty() {
                String::new()
            } else {
                format!("{verb} ")
            };
            let mut line = format!(
                "{verb}topic {}: element_max_bytes={} history={} first_seq={} last_seq={}",
                t.name, c.element_max_bytes, c.history, t.first_seq, t.last_seq
            );
            if !t.replicas.is_empty() {
                line.push_str(&format!(
                    " replication={} replicas={} leader={}",
                    t.replication,
                    t.replicas.join(","),
                    if t.leader.is_empty() {
                        "none"
                    } else {
                        &t.leader
                    }
                ));
                if !t.replica_constraint.is_empty() {
                    line.push_str(&format!(" constraint={}", t.replica_constraint));
                }
            }
            self.line(&line);
        }
    }

    pub fn topics(&mut self, topics: &[v1::TopicInfo]) {
        if self.json {
            for t in topics {
                self.json(topic_json(t));
            }
            return;
        }
        if topics.is_empty() {
            self.line("no topics");
            return;
        }
        self.line(&format!(
            "{:<40} {:>12} {:>12} {:>12} {:>4} {:>9} {:<10} REPLICAS",
            "NAME", "FIRST", "LAST", "HISTORY", "REPL", "COMMIT", "LEADER"
        ));
        for t in topics {
            let history = t.config.unwrap_or_default().history;
            let replicas: Vec<String> = t.replicas.iter().map(|p| short_peer(p)).collect();
            self.line(&format!(
                "{:<40} {:>12} {:>12} {:>12} {:>4} {:>9} {:<10} {}",
                t.name,
                t.first_seq,
                t.last_seq,
                history,
                t.replication,
                t.commit_index,
                if t.leader.is_empty() {
                    "-".to_string()
                } else {
                    short_peer(&t.leader)
                },
                replicas.join(",")
            ));
        }
    }

    /// The nodes, each with how many of `topics` it leads and holds a
    /// replica of (`topics`: every topic of the cluster, as `ClusterStatus`
    /// answers; empty for a standalone node's own listing).
    pub fn nodes(&mut self, nodes: &[v1::NodeStatus], topics: &[v1::TopicInfo]) {
        let share = |peer: &str| share_of(peer, topics);
        if self.json {
            for n in nodes {
                let (leads, replicas) = share(&n.peer_id);
                self.json(json!({
                    "peer_id": n.peer_id,
                    "tier": n.tier,
                    "attrs": n.attrs,
                    "capabilities": n.capabilities,
                    "addrs": n.addrs,
                    "state": n.state,
                    "silent_ms": n.silent_ms,
                    "grpc_addr": n.grpc_addr,
                    "local": n.local,
                    "leads": leads,
                    "replicas": replicas,
                }));
            }
            return;
        }
        self.line(&format!(
            "{:<54} {:<6} {:<10} {:>5} {:>8} {:<24} {:<28} ATTRS",
            "NODE", "TIER", "STATE", "LEADS", "REPLICAS", "GRPC", "OVERLAY"
        ));
        for n in nodes {
            let mut attrs: Vec<String> = n.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            attrs.sort();
            let id = if n.peer_id.is_empty() {
                "(standalone)"
            } else {
                &n.peer_id
            };
            let id = if n.local {
                format!("{id} *")
            } else {
                id.to_string()
            };
            let overlay = n
                .addrs
                .first()
                .map_or("", |a| a.split("/p2p/").next().unwrap_or(a));
            let (leads, replicas) = share(&n.peer_id);
            self.line(&format!(
                "{:<54} {:<6} {:<10} {:>5} {:>8} {:<24} {:<28} {}",
                id,
                n.tier,
                n.state,
                leads,
                replicas,
                n.grpc_addr.trim_start_matches("http://"),
                overlay,
                attrs.join(",")
            ));
        }
    }

    /// An empty line between sections (nothing in JSON).
    pub fn blank(&mut self) {
        if !self.json {
            self.line("");
        }
    }

    pub fn handler(&mut self, h: &v1::Handler, verb: &str) {
        let (kind, code) = match &h.code {
            Some(v1::handler::Code::Native(n)) => ("native", n.as_str()),
            Some(v1::handler::Code::Python(_)) => ("python", ""),
            None => ("", ""),
        };
        if self.json {
            self.json(json!({
                "topic": h.topic, "name": h.name, "kind": kind, "native": code,
                "placement": h.placement, "config": h.config, "version": h.version,
                "takes_over_at": h.takes_over_at, "done": h.done, "lag": h.lag,
                "runs_on": h.runs_on, "parked_at": h.parked_at, "parked_error": h.parked_error,
                "time_budget_ms": h.time_budget_ms, "memory_mib": h.memory_mib,
                "on_demand": h.on_demand, "outputs": h.outputs,
                "instances": h.instances.iter().map(|i| json!({
                    "node": i.node, "done": i.done, "lag": i.lag, "placed": i.placed,
                })).collect::<Vec<_>>(),
            }));
        } else {
            let verb = if verb.is_empty() {
                String::new()
            } else {
                format!("{verb} ")
            };
            let code = if code.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}:{code}")
            };
            let placement = if h.placement.is_empty() {
                "leader()"
            } else {
                &h.placement
            };
            let runs_on = if h.runs_on.is_empty() {
                "none"
            } else {
                &h.runs_on
            };
            let mut line = format!(
                "{verb}handler {}/{} {code} placement={placement} version={} from={} done={} lag={} runs_on={runs_on}",
                h.topic, h.name, h.version, h.takes_over_at, h.done, h.lag
            );
            if h.time_budget_ms > 0 {
                line.push_str(&format!(" time_budget={}ms", h.time_budget_ms));
            }
            if h.memory_mib > 0 {
                line.push_str(&format!(" memory={}MiB", h.memory_mib));
            }
            if h.on_demand {
                line.push_str(" on_demand");
            }
            for i in &h.instances {
                let placed = if i.placed { "" } else { " (not placed now)" };
                line.push_str(&format!(
                    "\n  instance on {}: done={} lag={}{placed}",
                    i.node, i.done, i.lag
                ));
            }
            if h.parked_at > 0 {
                line.push_str(&format!(
                    " PARKED at #{}: {} (woof handler resume {} {})",
                    h.parked_at, h.parked_error, h.topic, h.name
                ));
            }
            self.line(&line);
        }
    }

    /// What a handler's node counted since it started there.
    pub fn handler_counts(&mut self, logs: &v1::HandlerLogsResponse) {
        if self.json {
            self.json(json!({
                "node": logs.node, "runs": logs.runs, "errors": logs.errors,
                "timeouts": logs.timeouts,
            }));
        } else if logs.node.is_empty() {
            self.line("  not running anywhere now");
        } else {
            self.line(&format!(
                "  on {}: {} runs, {} errors, {} timeouts",
                logs.node, logs.runs, logs.errors, logs.timeouts
            ));
        }
    }

    /// One run of a handler on node `node`.
    pub fn invocation(&mut self, node: &str, i: &v1::Invocation) {
        if self.json {
            self.json(json!({
                "node": node, "id": i.id, "seq": i.seq, "at_ms": i.at_ms,
                "dispatch_us": i.dispatch_us, "duration_us": i.duration_us,
                "outcome": i.outcome, "error": i.error, "logs": i.logs,
                "ran_on": i.ran_on,
            }));
            return;
        }
        let short = node.get(node.len().saturating_sub(8)..).unwrap_or(node);
        let mut line = format!(
            "#{} seq={} node=..{short} {} in {} us (dispatched after {} us)",
            i.id, i.seq, i.outcome, i.duration_us, i.dispatch_us
        );
        if !i.ran_on.is_empty() {
            line.push_str(&format!(" ran on {}", short_peer(&i.ran_on)));
        }
        if !i.error.is_empty() {
            let last = i.error.lines().last().unwrap_or("");
            line.push_str(&format!(": {last}"));
        }
        self.line(&line);
        for log in &i.logs {
            self.line(&format!("    | {log}"));
        }
    }

    pub fn removed_handler(&mut self, topic: &str, name: &str) {
        if self.json {
            self.json(json!({ "removed_handler": name, "topic": topic }));
        } else {
            self.line(&format!("removed handler {topic}/{name}"));
        }
    }

    /// A device just registered or given a new key: its key, shown once.
    pub fn device_key(&mut self, r: &v1::AddDeviceResponse, verb: &str) {
        let d = r.device.clone().unwrap_or_default();
        if self.json {
            self.json(
                json!({ verb: d.id, "key": r.key, "topics": d.topics, "subscribe": d.subscribe }),
            );
        } else {
            self.line(&format!("{verb} device {}", d.id));
            self.line(&format!("key {}", r.key));
            self.line("(give the key to the device now: woof does not show it again)");
        }
    }

    /// A fleet just registered: its fleet key, shown once.
    pub fn fleet_key(&mut self, id: &str, n: u32, key: &str) {
        if self.json {
            self.json(json!({ "fleet": id, "devices": n, "key": key }));
        } else {
            self.line(&format!("added devices {id}-1 .. {id}-{n}"));
            self.line(&format!("fleet key {key}"));
            self.line(
                "(each device's key is derived from it and its id; woof does not show it again)",
            );
        }
    }

    pub fn devices(&mut self, devices: &[v1::Device]) {
        if self.json {
            for d in devices {
                self.json(json!({
                    "id": d.id, "topics": d.topics, "subscribe": d.subscribe,
                    "added_ms": d.added_ms, "keyed_ms": d.keyed_ms,
                }));
            }
            return;
        }
        if devices.is_empty() {
            self.line("no devices registered (woof device add ID --topics PATTERN)");
            return;
        }
        self.line(&format!("{:<24} {:<32} SUBSCRIBE", "DEVICE", "TOPICS"));
        for d in devices {
            let follows = if d.subscribe.is_empty() {
                "-".to_string()
            } else {
                d.subscribe.join(",")
            };
            self.line(&format!(
                "{:<24} {:<32} {follows}",
                d.id,
                d.topics.join(",")
            ));
        }
    }

    pub fn removed_device(&mut self, id: &str) {
        if self.json {
            self.json(json!({ "removed_device": id }));
        } else {
            self.line(&format!("removed device {id}"));
        }
    }

    pub fn revoked(&mut self, id: &str) {
        if self.json {
            self.json(json!({ "revoked": id }));
        } else {
            self.line(&format!("revoked token {id}"));
        }
    }

    pub fn deleted(&mut self, name: &str) {
        if self.json {
            self.json(json!({ "deleted": name }));
        } else {
            self.line(&format!("deleted topic {name}"));
        }
    }

    pub fn appended(&mut self, seq: u64, duplicate: bool) {
        if self.json {
            self.json(json!({ "seq": seq, "duplicate": duplicate }));
        } else if duplicate {
            self.line(&format!("{seq} (duplicate: already appended)"));
        } else {
            self.line(&seq.to_string());
        }
    }

    pub fn latest(&mut self, last: u64, first: u64) {
        if self.json {
            self.json(json!({ "last_seq": last, "first_seq": first }));
        } else {
            self.line(&last.to_string());
        }
    }

    /// One element's payload alone, as `get` prints it.
    pub fn payload(&mut self, e: &v1::Element) {
        if self.json {
            self.json(element_json(e));
            return;
        }
        match std::str::from_utf8(&e.payload) {
            Ok(text) => self.line(text),
            Err(_) => {
                let _ = self.out.write_all(&e.payload);
                let _ = self.out.flush();
            }
        }
    }

    /// An element's causal trace: its chain of causes, then the tree of
    /// what it caused.
    pub fn trace(&mut self, t: &v1::TraceResponse) {
        if self.json {
            let steps = |steps: &[v1::TraceStep]| steps.iter().map(step_json).collect::<Vec<_>>();
            self.json(json!({
                "element": t.element.as_ref().map(step_json),
                "upstream": steps(&t.upstream),
                "upstream_gone": t.upstream_gone,
                "downstream": steps(&t.downstream),
                "truncated": t.truncated,
            }));
            return;
        }
        let Some(first) = &t.element else { return };
        self.line("caused by (nearest first):");
        for s in std::iter::once(first).chain(&t.upstream) {
            let line = format!("  {}  {}", step_name(s), preview(s));
            self.line(&line);
            let e = s.element.clone().unwrap_or_default();
            let how = match &e.cause {
                Some(c) => format!(
                    "    made by handler {} from {}/{} on node {} at {}",
                    c.handler,
                    c.topic,
                    c.seq,
                    short_peer(&c.node),
                    clock(c.time_ms)
                ),
                None => format!("    appended by a client at {}", clock(e.append_time_ms)),
            };
            self.line(&how);
        }
        if !t.upstream_gone.is_empty() {
            self.line(&format!("    (the chain ends here: {})", t.upstream_gone));
        }
        if t.downstream.is_empty() {
            self.line(&format!("caused: nothing (yet) from {}", step_name(first)));
            return;
        }
        self.line(&format!("caused (from {}):", step_name(first)));
        // Depth first, each effect under the element it came from.
        let mut stack: Vec<usize> = children(&t.downstream, -1);
        stack.reverse();
        while let Some(i) = stack.pop() {
            let s = &t.downstream[i];
            let indent = "  ".repeat(s.depth as usize);
            let by = s
                .element
                .as_ref()
                .and_then(|e| e.cause.as_ref())
                .map(|c| {
                    format!(
                        "by {} on {} at {}",
                        c.handler,
                        short_peer(&c.node),
                        clock(c.time_ms)
                    )
                })
                .unwrap_or_default();
            let line = format!("{indent}└ {}  {by}  {}", step_name(s), preview(s));
            self.line(&line);
            let mut below = children(&t.downstream, i as i64);
            below.reverse();
            stack.extend(below);
        }
        if t.truncated {
            self.line("  (cut short: at most 1,000 effects, 16 levels)");
        }
    }

    /// One element as a line of a scan or tail: `SEQ<TAB>PAYLOAD`.
    pub fn element(&mut self, e: &v1::Element) {
        if self.json {
            self.json(element_json(e));
            return;
        }
        let shown = match std::str::from_utf8(&e.payload) {
            Ok(text) => text.to_string(),
            Err(_) => format!("0x{}", hex(&e.payload)),
        };
        self.line(&format!("{}\t{shown}", e.seq));
    }
}

/// How many of `topics` `peer` leads, and holds a replica of. A topic
/// whose group sleeps (idle a while) has no leader and counts for none.
fn share_of(peer: &str, topics: &[v1::TopicInfo]) -> (usize, usize) {
    if peer.is_empty() {
        return (0, 0);
    }
    let leads = topics.iter().filter(|t| t.leader == peer).count();
    let replicas = topics
        .iter()
        .filter(|t| t.replicas.iter().any(|r| r == peer))
        .count();
    (leads, replicas)
}

/// The end of a peer id, enough to tell a cluster's nodes apart in a table.
fn short_peer(peer: &str) -> String {
    let tail = peer.len().saturating_sub(8);
    format!("…{}", peer.get(tail..).unwrap_or(peer))
}

/// `topic/seq` of a trace step.
fn step_name(s: &v1::TraceStep) -> String {
    format!("{}/{}", s.topic, s.element.as_ref().map_or(0, |e| e.seq))
}

/// A step's payload, short, for a line of a trace.
fn preview(s: &v1::TraceStep) -> String {
    let payload = s.element.as_ref().map(|e| &e.payload[..]).unwrap_or(&[]);
    match std::str::from_utf8(payload) {
        Ok(text) if text.chars().count() > 60 => {
            format!("{}…", text.chars().take(60).collect::<String>())
        }
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", hex(&payload[..payload.len().min(30)])),
    }
}

/// The indexes of the effects made from effect `parent` (-1: the traced
/// element), in order.
fn children(steps: &[v1::TraceStep], parent: i64) -> Vec<usize> {
    (0..steps.len())
        .filter(|&i| steps[i].parent == parent)
        .collect()
}

/// A wall-clock time in ms as `HH:MM:SS.mmm` (UTC).
fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn step_json(s: &v1::TraceStep) -> Value {
    let e = s.element.clone().unwrap_or_default();
    let mut v = element_json(&e);
    v["topic"] = json!(s.topic);
    v["cause"] = match &e.cause {
        Some(c) => json!({
            "topic": c.topic, "seq": c.seq, "handler": c.handler,
            "node": c.node, "time_ms": c.time_ms,
        }),
        None => Value::Null,
    };
    if s.depth > 0 {
        v["parent"] = json!(s.parent);
        v["depth"] = json!(s.depth);
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn topic_json(t: &v1::TopicInfo) -> Value {
    let c = t.config.unwrap_or_default();
    json!({
        "name": t.name,
        "element_max_bytes": c.element_max_bytes,
        "history": c.history,
        "first_seq": t.first_seq,
        "last_seq": t.last_seq,
        "created_at_ms": t.created_at_ms,
        "replication": t.replication,
        "replica_constraint": t.replica_constraint,
        "replicas": t.replicas,
        "leader": t.leader,
        "commit_index": t.commit_index,
        "progress": t
            .progress
            .iter()
            .map(|p| json!({ "peer": p.peer, "matched_index": p.matched_index }))
            .collect::<Vec<_>>(),
    })
}

fn element_json(e: &v1::Element) -> Value {
    let mut v = json!({ "seq": e.seq, "append_time_ms": e.append_time_ms });
    match std::str::from_utf8(&e.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => v["payload_hex"] = json!(hex(&e.payload)),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_payloads_are_hex() {
        let e = v1::Element {
            seq: 3,
            payload: vec![0xff, 0x00].into(),
            append_time_ms: 9,
            cause: None,
        };
        assert_eq!(element_json(&e)["payload_hex"], "ff00");
        let t = v1::Element {
            payload: "hi".into(),
            ..e
        };
        assert_eq!(element_json(&t)["payload"], "hi");
    }

    #[test]
    fn a_nodes_share_counts_the_topics_it_leads_and_holds() {
        let topic = |leader: &str, replicas: &[&str]| v1::TopicInfo {
            leader: leader.into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let topics = [
            topic("a", &["a", "b", "c"]),
            topic("b", &["a", "b", "c"]),
            // Asleep: nobody leads it.
            topic("", &["a", "b", "d"]),
            topic("a", &["a", "c", "d"]),
        ];
        assert_eq!(share_of("a", &topics), (2, 4));
        assert_eq!(share_of("b", &topics), (1, 3));
        assert_eq!(share_of("d", &topics), (0, 2));
        assert_eq!(share_of("e", &topics), (0, 0));
        // A standalone node has no peer id: the sleeping topic's empty
        // leader is not it.
        assert_eq!(share_of("", &topics), (0, 0));
    }

    #[test]
    fn clock_times_are_utc_hours_to_millis() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn a_trace_prints_each_effect_under_its_cause() {
        let step = |topic: &str, seq, parent, depth| v1::TraceStep {
            topic: topic.into(),
            element: Some(v1::Element {
                seq,
                payload: format!("{topic}{seq}").into_bytes().into(),
                append_time_ms: 0,
                cause: None,
            }),
            parent,
            depth,
        };
        let t = v1::TraceResponse {
            element: Some(step("in", 1, -1, 0)),
            upstream: vec![],
            upstream_gone: String::new(),
            // Breadth first: b/1 and c/1 from in/1, d/1 from b/1.
            downstream: vec![step("b", 1, -1, 1), step("c", 1, -1, 1), step("d", 1, 0, 2)],
            truncated: false,
        };
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output {
            json: false,
            out: Box::new(Shared(buf.clone())),
        };
        out.trace(&t);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let order: Vec<&str> = text
            .lines()
            .filter(|l| l.contains('└'))
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(order, ["b/1", "d/1", "c/1"], "{text}");
        assert!(
            text.contains("    └ d/1"),
            "d/1 is indented under b/1: {text}"
        );
        assert!(text.contains("appended by a client"), "{text}");
    }
}
