//! `/metrics` over HTTP on a real node: the counts move with what was done.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use woof_node::server::Node;
use woof_proto::v1;

/// `GET path`: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = common::http::get(addr, path)
        .await
        .expect("a scrape answers within 10 s");
    (answer.status, answer.body)
}

/// The value of the series `name` (with its labels, exactly), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_was_appended() {
    let dir = tempfile::tempdir().unwrap();
    // Clustered: handlers run only on cluster nodes.
    let key = woof_overlay::ClusterKey::generate();
    let mut config = common::clustered_config(dir.path(), key, vec![]);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start(&config).await.unwrap();
    let addr = node.metrics_addr().expect("it serves metrics");
    let mut client = woof_node::cli::connect(&node.url()).await.unwrap();

    // Before anything: the families are there, with their help texts.
    let (status, before) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        before.contains("# HELP woof_append_latency_seconds "),
        "{before}"
    );
    assert_eq!(
        value(&before, "woof_append_latency_seconds_count"),
        Some(0.0)
    );
    assert!(value(&before, "woof_process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&before, "woof_process_cpu_seconds_total").is_some());

    common::create_replicated(&mut client, "farm/soil", 1, "").await;
    common::create_replicated(&mut client, "farm/copy", 1, "").await;
    client
        .deploy_handler(v1::DeployHandlerRequest {
            handler: Some(v1::Handler {
                topic: "farm/soil".into(),
                name: "copy".into(),
                code: Some(v1::handler::Code::Native("forward".into())),
                config: r#"{"to": "farm/copy"}"#.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut bytes = 0;
    for i in 0..7 {
        let payload = format!("reading {i}");
        bytes += payload.len();
        common::append(&mut client, "farm/soil", payload).await;
    }
    client
        .append_batch(v1::AppendBatchRequest {
            topic: "farm/soil".into(),
            payloads: vec![
                bytes::Bytes::from_static(b"a"),
                bytes::Bytes::from_static(b"bb"),
                bytes::Bytes::from_static(b"ccc"),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    bytes += 6;
    // On one stream: two appended, one refused (no such topic).
    let streamed = common::append_streamed(
        &mut client,
        ["farm/soil", "farm/none", "farm/soil"]
            .iter()
            .map(|t| v1::AppendRequest {
                topic: t.to_string(),
                payload: bytes::Bytes::from_static(b"dddd"),
                ..Default::default()
            })
            .collect(),
    )
    .await;
    assert!(
        matches!(
            streamed[..],
            [
                v1::append_stream_response::Outcome::Appended(_),
                v1::append_stream_response::Outcome::Error(_),
                v1::append_stream_response::Outcome::Appended(_)
            ]
        ),
        "{streamed:?}"
    );
    bytes += 8;
    // Two refusals: a missing topic, a bad name.
    assert_eq!(
        common::get(&mut client, "farm/none", 1)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    let bad = client
        .append(v1::AppendRequest {
            topic: "Bad Name".into(),
            payload: bytes::Bytes::from_static(b"x"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    common::get(&mut client, "farm/soil", 2).await.unwrap();
    let _tail = common::subscribe(
        &mut client,
        "farm/soil",
        v1::subscribe_request::Start::FromSeq(1),
    )
    .await;
    // The subscription's task starts as its stream is answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The handler copied all ten.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let handlers = client
            .list_handlers(v1::ListHandlersRequest {
                topic: "farm/soil".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .handlers;
        if handlers.first().is_some_and(|h| h.done >= 12) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler did not finish: {handlers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, text) = http_get(addr, "/metrics").await;
    let topic = |name: &str| value(&text, &format!("{name}{{topic=\"farm/soil\"}}"));
    assert_eq!(topic("woof_topic_appends_total"), Some(12.0), "{text}");
    let handler = |name: &str| {
        value(
            &text,
            &format!("{name}{{topic=\"farm/soil\",handler=\"copy\"}}"),
        )
    };
    assert_eq!(
        handler("woof_handler_invocations_total"),
        Some(12.0),
        "{text}"
    );
    assert_eq!(handler("woof_handler_errors_total"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "woof_handler_dispatch_latency_seconds_count"),
        Some(12.0)
    );
    assert_eq!(topic("woof_topic_appended_bytes_total"), Some(bytes as f64));
    // One observation per append request that succeeded: 7 + 1 batch + 2
    // on the stream.
    assert_eq!(
        value(&text, "woof_append_latency_seconds_count"),
        Some(10.0)
    );
    assert!(value(&text, "woof_append_latency_seconds_sum").unwrap() > 0.0);
    assert_eq!(
        value(&text, "woof_append_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(10.0)
    );
    assert_eq!(value(&text, "woof_read_latency_seconds_count"), Some(1.0));
    let rejected = |code: &str| {
        value(
            &text,
            &format!("woof_requests_rejected_total{{code=\"{code}\"}}"),
        )
    };
    // The stream's refused request counts; the stream itself ended well.
    assert_eq!(rejected("NOT_FOUND"), Some(2.0));
    assert_eq!(rejected("INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(value(&text, "woof_subscribers"), Some(1.0));
    assert!(text.ends_with("# EOF\n"));

    let (status, _) = http_get(addr, "/other").await;
    assert_eq!(status, 404);
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = common::config(dir.path());
    config.metrics_listen = Some(taken.local_addr().unwrap());
    let err = Node::start(&config).await.err().expect("the port is taken");
    let text = err.to_string();
    assert!(
        text.contains(&taken.local_addr().unwrap().to_string()),
        "{text}"
    );
}
