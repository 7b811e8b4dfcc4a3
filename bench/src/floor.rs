//! `floor`: what one replicated append costs below the network, to read the
//! `append` figures against.
//!
//! One topic's Raft group (the consensus crate's own group, state machine
//! and RocksDB log, exactly as a node runs them) on 1, 3 or 5 replicas in
//! this process, each replica with its own RocksDB in its own directory,
//! joined by a transport that hands a message straight to the target's
//! router: no gRPC, no overlay, no serialisation to a socket. One client
//! appends 64-byte elements one at a time at the leader; every append is
//! synced on a majority, as on real nodes. What `append --replication 3`
//! measures above this is the network path (gRPC, the overlay, the
//! processes).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::FutureExt;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use openraft::BasicNode;
use woof_consensus::raft::Command;
use woof_consensus::raft::group::{self, Timing};
use woof_consensus::raft::network::{Router, Transport};
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::{GROUP_ID_MIN, GroupId, RocksStore};
use woof_consensus::topic::{TopicConfig, TopicId, TopicMeta, TopicName};

use crate::report::{Report, probe_machine};

/// Every replica's router, by name.
#[derive(Default)]
struct InProcess {
    routers: RwLock<HashMap<String, Router>>,
}

struct Link(Arc<InProcess>);

impl Transport for Link {
    fn send(
        &self,
        node: &BasicNode,
        message: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, woof_consensus::Error>> {
        let router = self
            .0
            .routers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node.addr)
            .cloned();
        async move {
            match router {
                Some(r) => r.handle(&message).await,
                None => Err(woof_consensus::Error::Closed),
            }
        }
        .boxed()
    }
}

pub async fn run(replicas: u64, appends: usize) -> anyhow::Result<Report> {
    if ![1, 3, 5].contains(&replicas) {
        bail!("--replicas must be 1, 3 or 5");
    }
    if !(1..=1_000_000).contains(&appends) {
        bail!("--appends must be 1 to 1,000,000");
    }
    let dir = tempfile::tempdir()?;
    let mut report = Report::new(probe_machine(dir.path())?);
    let net = Arc::new(InProcess::default());
    let group = GroupId(GROUP_ID_MIN);
    let mut rafts: Vec<Raft> = Vec::new();
    for id in 1..=replicas {
        let router = Router::default();
        net.routers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("r{id}"), router.clone());
        let store = Arc::new(RocksStore::open(&dir.path().join(format!("r{id}")))?);
        let transport = Arc::new(Link(net.clone()));
        rafts.push(
            group::start(
                id,
                group,
                store,
                transport,
                &router,
                Timing::default(),
                None,
                false,
            )
            .await?,
        );
    }
    let members: BTreeMap<u64, BasicNode> = (1..=replicas)
        .map(|id| (id, BasicNode::new(format!("r{id}"))))
        .collect();
    rafts[0].initialize(members).await?;
    let leader = rafts[0]
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .context("no leader within 10 s")?
        .current_leader
        .context("no leader")?;
    let raft = rafts
        .iter()
        .find(|r| r.metrics().borrow_watched().id == leader)
        .context("the leader is not one of the replicas")?
        .clone();
    // The others may name it before it has taken office.
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state == openraft::ServerState::Leader, "leading")
        .await
        .context("the leader did not take office within 10 s")?;
    let meta = TopicMeta {
        id: TopicId(group.0),
        name: TopicName::new("bench/floor")?,
        config: TopicConfig::default(),
        created_at_ms: 1,
        placement: Default::default(),
    };
    // A new leader may still refuse for a moment (openraft 0.10 takes
    // office in steps); the create is retried for up to 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match raft.client_write(Command::Create(meta.clone())).await {
            Ok(_) => break,
            Err(e) if e.forward_to_leader().is_some() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut h = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..appends {
        let t = Instant::now();
        raft.client_write(Command::Append {
            payloads: vec![bytes::Bytes::from(vec![0x5a; 64])],
            producer: None,
            time_ms: i as u64,
            cause: None,
            handler: None,
        })
        .await?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let case =
        format!("{replicas} replica(s) in one process, no network, 1 client, 64 B, synced append");
    report.latency(&case, "p50", &h, 0.5);
    report.latency(&case, "p99", &h, 0.99);
    report.row(&case, "throughput", appends as f64 / secs, "appends/s");
    for raft in rafts {
        let _ = raft.shutdown().await;
    }
    Ok(report)
}
