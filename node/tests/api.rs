//! The gRPC API of one node, through a real tonic client on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tonic::Code;
use woof_proto::v1::{self, subscribe_request::Start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_get_latest_scan_are_dense_from_one() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "farm/a", 0, 0).await;
    assert_eq!(latest(&mut c, "farm/a").await.last_seq, 0);
    for i in 1..=50u64 {
        assert_eq!(append(&mut c, "farm/a", format!("r{i}")).await, i);
    }
    let l = latest(&mut c, "farm/a").await;
    assert_eq!((l.first_seq, l.last_seq), (1, 50));
    let e = get(&mut c, "farm/a", 17).await.unwrap();
    assert_eq!((e.seq, &e.payload[..]), (17, &b"r17"[..]));
    assert!(e.append_time_ms > 1_600_000_000_000);
    let all = scan_all(&mut c, "farm/a", 1).await;
    assert_eq!(all.len(), 50);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.payload, format!("r{}", i + 1).into_bytes());
    }
    let page = c
        .scan(v1::ScanRequest {
            topic: "farm/a".into(),
            from_seq: 45,
            limit: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.elements.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [45, 46, 47]
    );
    assert_eq!(page.next_seq, 48);
    // One past the end is an empty page, not an error.
    let end = c
        .scan(v1::ScanRequest {
            topic: "farm/a".into(),
            from_seq: 51,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(end.elements.is_empty());
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_listed_described_and_deleted() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "b/two", 100, 7).await;
    create(&mut c, "a/one", 0, 0).await;
    let dup = c
        .create_topic(v1::CreateTopicRequest {
            name: "a/one".into(),
            config: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    let list = c
        .list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a/one", "b/two"]);
    let d = c
        .describe_topic(v1::DescribeTopicRequest {
            name: "b/two".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let cfg = d.config.unwrap();
    assert_eq!((cfg.element_max_bytes, cfg.history), (100, 7));
    let a = list.topics[0].config.unwrap();
    assert_eq!((a.element_max_bytes, a.history), (1024 * 1024, 1_000_000));

    append(&mut c, "b/two", "x").await;
    let mut sub = subscribe(&mut c, "b/two", Start::Latest(true)).await;
    c.delete_topic(v1::DeleteTopicRequest {
        name: "b/two".into(),
    })
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), sub.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    let gone = get(&mut c, "b/two", 1).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // The name can be used again, and numbering starts over.
    create(&mut c, "b/two", 0, 0).await;
    assert_eq!(append(&mut c, "b/two", "y").await, 1);
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_from_one_sees_history_then_live_without_gap_or_duplicate() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "s", 0, 0).await;
    let r = c
        .append_batch(v1::AppendBatchRequest {
            topic: "s".into(),
            payloads: (1..=1000).map(|i| format!("e{i}").into()).collect(),
            producer: None,
            handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.first_seq, r.count), (1, 1000));
    let mut sub = subscribe(&mut c, "s", Start::FromSeq(1)).await;
    // Live appends race with the replay, from another client.
    let mut writer = n.client().await;
    let live = tokio::spawn(async move {
        for i in 1001..=1200 {
            assert_eq!(append(&mut writer, "s", format!("e{i}")).await, i);
        }
    });
    for expected in 1..=1200u64 {
        let e = next_element(&mut sub).await;
        assert_eq!(e.seq, expected);
        assert_eq!(e.payload, format!("e{expected}").into_bytes());
    }
    live.await.unwrap();
    // Nothing more than what was appended.
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.message()).await;
    assert!(extra.is_err(), "no element beyond 1200: {extra:?}");

    // "latest" sees only new appends; "earliest" starts at the oldest held.
    let mut new_only = subscribe(&mut c, "s", Start::Latest(true)).await;
    let mut earliest = subscribe(&mut c, "s", Start::Earliest(true)).await;
    append(&mut c, "s", "after").await;
    assert_eq!(next_element(&mut new_only).await.seq, 1201);
    assert_eq!(next_element(&mut earliest).await.seq, 1);
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_dense_numbers() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "many", 0, 0).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = n.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push((append(&mut c, "many", format!("w{w}-{i}")).await, w, i));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let seqs: HashSet<u64> = all.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=800).collect::<HashSet<_>>());
    for (seq, w, i) in all {
        let e = get(&mut c, "many", seq).await.unwrap();
        assert_eq!(e.payload, format!("w{w}-{i}").into_bytes());
    }
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_only_the_newest() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "h", 0, 10).await;
    for i in 1..=100u64 {
        append(&mut c, "h", format!("v{i}")).await;
    }
    let l = latest(&mut c, "h").await;
    assert_eq!((l.first_seq, l.last_seq), (91, 100));
    for seq in 91..=100 {
        assert_eq!(
            get(&mut c, "h", seq).await.unwrap().payload,
            format!("v{seq}").into_bytes()
        );
    }
    for seq in [1, 5, 90] {
        let err = get(&mut c, "h", seq).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("91..=100"), "{}", err.message());
    }
    let all = scan_all(&mut c, "h", 91).await;
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (91..=100).collect::<Vec<_>>()
    );
    let err = c
        .scan(v1::ScanRequest {
            topic: "h".into(),
            from_seq: 50,
            limit: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = c
        .subscribe(v1::SubscribeRequest {
            topic: "h".into(),
            start: Some(Start::FromSeq(3)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    // The trim survives a restart, and so does the numbering.
    let dir = n.dir;
    n.node.stop().await.unwrap();
    let node = woof_node::server::Node::start(&config(dir.path()))
        .await
        .unwrap();
    let mut c = woof_node::cli::connect(&node.url()).await.unwrap();
    let l = latest(&mut c, "h").await;
    assert_eq!((l.first_seq, l.last_seq), (91, 100));
    assert_eq!(
        get(&mut c, "h", 90).await.unwrap_err().code(),
        Code::OutOfRange
    );
    assert_eq!(append(&mut c, "h", "v101").await, 101);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_the_history_is_told() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "fast", 0, 20).await;
    let mut sub = subscribe(&mut c, "fast", Start::FromSeq(1)).await;
    // The subscriber reads nothing while 10,000 elements go by: its buffer
    // fills, and what it still needs is trimmed.
    for _ in 0..10 {
        c.append_batch(v1::AppendBatchRequest {
            topic: "fast".into(),
            payloads: vec![vec![7u8; 1000].into(); 1000],
            producer: None,
            handler: String::new(),
        })
        .await
        .unwrap();
    }
    let mut seen = 0u64;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.message())
            .await
            .unwrap()
        {
            Ok(Some(r)) => {
                seen += 1;
                assert_eq!(r.element.unwrap().seq, seen, "in order until the end");
            }
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("fell behind"), "{}", err.message());
    assert!(seen < 10_000);
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retry_returns_the_first_number_and_writes_nothing() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "p", 0, 0).await;
    append(&mut c, "p", "before").await;
    let send = |seq: u64, payload: &'static str| v1::AppendRequest {
        topic: "p".into(),
        payload: payload.into(),
        producer: Some(v1::Producer {
            id: "sensor-9".into(),
            seq,
        }),
        handler: Default::default(),
    };
    let first = c.append(send(1, "a")).await.unwrap().into_inner();
    assert_eq!((first.seq, first.duplicate), (2, false));
    let retry = c.append(send(1, "a")).await.unwrap().into_inner();
    assert_eq!((retry.seq, retry.duplicate), (2, true));
    let next = c.append(send(2, "b")).await.unwrap().into_inner();
    assert_eq!((next.seq, next.duplicate), (3, false));
    let retry = c.append(send(1, "a")).await.unwrap().into_inner();
    assert_eq!(retry.seq, 2);
    assert_eq!(latest(&mut c, "p").await.last_seq, 3);
    let payloads: Vec<_> = scan_all(&mut c, "p", 1)
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, [&b"before"[..], b"a", b"b"]);
    // A batch is one producer sequence.
    let batch = v1::AppendBatchRequest {
        topic: "p".into(),
        payloads: vec!["x".into(), "y".into()],
        producer: Some(v1::Producer {
            id: "sensor-9".into(),
            seq: 5,
        }),
        handler: String::new(),
    };
    let b1 = c.append_batch(batch.clone()).await.unwrap().into_inner();
    let b2 = c.append_batch(batch).await.unwrap().into_inner();
    assert_eq!((b1.first_seq, b1.count, b1.duplicate), (4, 2, false));
    assert_eq!((b2.first_seq, b2.count, b2.duplicate), (4, 2, true));
    // Lower than seen but never committed: refused, not appended.
    let err = c.append(send(3, "c")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(latest(&mut c, "p").await.last_seq, 5);
    // Remembered across a restart.
    let dir = n.dir;
    n.node.stop().await.unwrap();
    let node = woof_node::server::Node::start(&config(dir.path()))
        .await
        .unwrap();
    let mut c = woof_node::cli::connect(&node.url()).await.unwrap();
    let retry = c.append(send(2, "b")).await.unwrap().into_inner();
    assert_eq!((retry.seq, retry.duplicate), (3, true));
    assert_eq!(latest(&mut c, "p").await.last_seq, 5);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_the_node_keeps_serving() {
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "ok", 16, 0).await;

    let long = "a".repeat(300);
    for name in [
        "",
        "..",
        "a/../b",
        "Upper",
        long.as_str(),
        "nul\0byte",
        "a//b",
        "/lead",
    ] {
        let err = c
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                config: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}: {err:?}");
        assert!(
            err.message().contains("invalid topic name"),
            "{}",
            err.message()
        );
        let err = get(&mut c, name, 1).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}: {err:?}");
    }
    for (element_max_bytes, history) in [(5 * 1024 * 1024, 0), (0, 1 << 50)] {
        let err = c
            .create_topic(v1::CreateTopicRequest {
                name: "cfg".into(),
                config: Some(v1::TopicConfig {
                    element_max_bytes,
                    history,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }

    let err = c
        .append(v1::AppendRequest {
            topic: "ok".into(),
            payload: vec![0; 17].into(),
            producer: None,
            handler: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("over the topic's limit of 16"),
        "{}",
        err.message()
    );

    let err = c
        .append(v1::AppendRequest {
            topic: "nope".into(),
            payload: "x".into(),
            producer: None,
            handler: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("\"nope\" not found"),
        "{}",
        err.message()
    );

    assert_eq!(append(&mut c, "ok", "one").await, 1);
    assert_eq!(
        get(&mut c, "ok", 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let err = get(&mut c, "ok", 2).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("1..=1"), "{}", err.message());
    assert_eq!(
        get(&mut c, "ok", u64::MAX).await.unwrap_err().code(),
        Code::OutOfRange
    );
    for (from_seq, limit, code) in [
        (0, 10, Code::InvalidArgument),
        (1, 10_001, Code::InvalidArgument),
        (3, 10, Code::OutOfRange),
        (u64::MAX, 10, Code::OutOfRange),
    ] {
        let err = c
            .scan(v1::ScanRequest {
                topic: "ok".into(),
                from_seq,
                limit,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "scan {from_seq} {limit}: {err:?}");
    }
    let err = c
        .subscribe(v1::SubscribeRequest {
            topic: "ok".into(),
            start: Some(Start::FromSeq(0)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A million (empty) elements in one batch: refused whole.
    let err = c
        .append_batch(v1::AppendBatchRequest {
            topic: "ok".into(),
            payloads: vec![Default::default(); 1_000_000],
            producer: None,
            handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("at most 10000 elements"),
        "{}",
        err.message()
    );
    // An empty batch, and a message over the gRPC size limit.
    let err = c
        .append_batch(v1::AppendBatchRequest {
            topic: "ok".into(),
            payloads: vec![],
            producer: None,
            handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A client without woof's own size limit sends 11 MiB; the node refuses it.
    let mut unbounded = v1::woof_client::WoofClient::connect(n.node.url())
        .await
        .unwrap();
    let err = unbounded
        .append(v1::AppendRequest {
            topic: "ok".into(),
            payload: vec![0; 11 * 1024 * 1024].into(),
            producer: None,
            handler: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{err:?}");
    for (id, seq) in [("", 1), ("p", 0)] {
        let err = c
            .append(v1::AppendRequest {
                topic: "ok".into(),
                payload: "x".into(),
                producer: Some(v1::Producer { id: id.into(), seq }),
                handler: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }

    // Nothing was written by any of that, and the node still serves.
    assert_eq!(latest(&mut c, "ok").await.last_seq, 1);
    assert_eq!(append(&mut c, "ok", "two").await, 2);
    n.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stream_answers_each_request_in_order_and_goes_on_past_errors() {
    use v1::append_stream_response::Outcome;
    let n = TestNode::start().await;
    let mut c = n.client().await;
    create(&mut c, "s", 16, 0).await;
    let plain = |payload: Vec<u8>| v1::AppendRequest {
        topic: "s".into(),
        payload: payload.into(),
        producer: None,
        handler: Default::default(),
    };
    let by = |seq: u64| v1::AppendRequest {
        producer: Some(v1::Producer {
            id: "sensor-1".into(),
            seq,
        }),
        ..plain(format!("p{seq}").into_bytes())
    };
    // Each request with what it should get: Ok(duplicate) or the error's
    // code.
    let mut cases: Vec<(v1::AppendRequest, Result<bool, Code>)> = Vec::new();
    for i in 0..300 {
        cases.push((plain(format!("a{i}").into_bytes()), Ok(false)));
    }
    // Sent together with plain appends to the same topic: only it fails.
    cases.push((plain(vec![0; 17]), Err(Code::InvalidArgument)));
    for i in 0..100 {
        cases.push((plain(format!("b{i}").into_bytes()), Ok(false)));
    }
    let elsewhere = v1::AppendRequest {
        topic: "nope".into(),
        ..plain(b"x".to_vec())
    };
    cases.push((elsewhere, Err(Code::NotFound)));
    cases.push((by(1), Ok(false)));
    cases.push((by(1), Ok(true)));
    let on_demand = v1::AppendRequest {
        handler: "no-such-handler".into(),
        ..plain(b"h".to_vec())
    };
    cases.push((on_demand, Err(Code::InvalidArgument)));
    for i in 0..99 {
        cases.push((plain(format!("c{i}").into_bytes()), Ok(false)));
    }
    let (requests, expect): (Vec<_>, Vec<_>) = cases.into_iter().unzip();

    // Everything sent at once, before any answer is read.
    let sent = requests.clone();
    let got = append_streamed(&mut c, requests).await;
    assert_eq!(got.len(), expect.len(), "one answer per request");
    let mut next = 1u64;
    let mut stored = Vec::new();
    for (i, (got, expect)) in got.iter().zip(&expect).enumerate() {
        match (got, expect) {
            (Outcome::Appended(a), Ok(false)) => {
                assert_eq!((a.seq, a.duplicate), (next, false), "request {i}");
                next += 1;
                stored.push(sent[i].payload.clone());
            }
            (Outcome::Appended(a), Ok(true)) => {
                assert_eq!((a.seq, a.duplicate), (next - 1, true), "request {i}");
            }
            (Outcome::Error(e), Err(code)) => {
                assert_eq!(Code::from_i32(e.code), *code, "request {i}: {}", e.message);
                assert!(!e.message.is_empty());
            }
            (got, expect) => panic!("request {i}: got {got:?}, expected {expect:?}"),
        }
    }
    // Stored in the order sent, each once.
    let all: Vec<_> = scan_all(&mut c, "s", 1)
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(all, stored);
    assert_eq!(latest(&mut c, "s").await.last_seq, next - 1);

    // A stream answered one request at a time, as a closed-loop client
    // uses it.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = c
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..20u64 {
        tx.send(plain(format!("d{i}").into_bytes())).await.unwrap();
        let answer = answers.message().await.unwrap().unwrap().outcome;
        assert!(
            matches!(answer, Some(Outcome::Appended(ref a)) if a.seq == next + i),
            "{answer:?}"
        );
    }
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "ends when the client does"
    );
    n.node.stop().await.unwrap();
}
