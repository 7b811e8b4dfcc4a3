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

    pub fn nodes(&mut self, nodes: &[v1::NodeStatus]) {
        if self.json {
            for n in nodes {
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
                }));
            }
            return;
        }
        self.line(&format!(
            "{:<54} {:<6} {:<10} {:<24} {:<28} ATTRS",
            "NODE", "TIER", "STATE", "GRPC", "OVERLAY"
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
            self.line(&format!(
                "{:<54} {:<6} {:<10} {:<24} {:<28} {}",
                id,
                n.tier,
                n.state,
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
            }));
            return;
        }
        let short = node.get(node.len().saturating_sub(8)..).unwrap_or(node);
        let mut line = format!(
            "#{} seq={} node=..{short} {} in {} us (dispatched after {} us)",
            i.id, i.seq, i.outcome, i.duration_us, i.dispatch_us
        );
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

/// The end of a peer id, enough to tell a cluster's nodes apart in a table.
fn short_peer(peer: &str) -> String {
    let tail = peer.len().saturating_sub(8);
    format!("…{}", peer.get(tail..).unwrap_or(peer))
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
        };
        assert_eq!(element_json(&e)["payload_hex"], "ff00");
        let t = v1::Element {
            payload: "hi".into(),
            ..e
        };
        assert_eq!(element_json(&t)["payload"], "hi");
    }
}
