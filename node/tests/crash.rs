//! Durability: a node killed with SIGKILL keeps every acknowledged append.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use woof_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start_in(dir.path());
    let mut c = woof_node::cli::connect(&node.url).await.unwrap();
    create(&mut c, "crash/test", 0, 0).await;

    // Several clients append as fast as they can; each records what was acked.
    let acked: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = node.url.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut c = woof_node::cli::connect(&url).await.unwrap();
            for i in 0.. {
                let payload = format!("w{w}-{i}").into_bytes();
                let r = c
                    .append(v1::AppendRequest {
                        topic: "crash/test".into(),
                        payload: payload.clone().into(),
                        producer: None,
                        handler: Default::default(),
                    })
                    .await;
                match r {
                    Ok(r) => {
                        let prev = acked.lock().unwrap().insert(r.into_inner().seq, payload);
                        assert!(prev.is_none(), "two acks with one sequence number");
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number are acknowledged, while appends are in flight.
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked.lock().unwrap().len() < 400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("400 appends within 60 s");
    node.kill_hard();
    for w in writers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let max_acked = *acked.keys().max().unwrap();

    let node = NodeProcess::start_in(dir.path());
    let mut c = woof_node::cli::connect(&node.url).await.unwrap();
    let last = latest(&mut c, "crash/test").await.last_seq;
    assert!(
        last >= max_acked,
        "last {last} < highest acknowledged {max_acked}"
    );
    let all = scan_all(&mut c, "crash/test", 1).await;
    assert_eq!(all.len() as u64, last, "no gaps");
    let mut payloads = std::collections::HashSet::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert!(
            payloads.insert(e.payload.clone()),
            "duplicate payload at {}",
            e.seq
        );
    }
    for (seq, payload) in &acked {
        assert_eq!(
            &all[*seq as usize - 1].payload[..],
            &payload[..],
            "element {seq} changed"
        );
    }
    assert_eq!(append(&mut c, "crash/test", "after").await, last + 1);
}
