//! Running a node for real: JSON logs whose request lines name their topic
//! and peer, gRPC health (`grpc.health.v1`) that turns NOT_SERVING as the
//! node stops or its storage fails, and server reflection; all on real
//! `woof` processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use woof_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_each_requests_topic_and_peer() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let node = tokio::task::spawn_blocking({
        let (data, key) = (dir.path().join("n"), key.clone());
        move || start_node(&data, &key, &["--log-format", "json"])
    })
    .await
    .unwrap();
    let mut client = connect(&node.url).await;
    create_replicated(&mut client, "logged/topic", 1, "").await;
    let log = std::fs::read_to_string(&node.log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    let created = lines
        .iter()
        .find(|l| l["fields"]["message"] == "topic created")
        .unwrap_or_else(|| panic!("no 'topic created' line: {log}"));
    let span = created["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "rpc"))
        .unwrap_or_else(|| panic!("not in a request's span: {created}"));
    assert_eq!(span["rpc"], "woof.v1.Woof/CreateTopic", "{created}");
    assert_eq!(span["topic"], "logged/topic", "{created}");
    let peer = span["peer"].as_str().unwrap_or_default();
    assert!(
        peer.starts_with("127.0.0.1:") && peer.parse::<std::net::SocketAddr>().is_ok(),
        "{created}"
    );
    assert_eq!(created["level"], "INFO");
}

/// Asks the node's reflection service one question.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse = answers.next().await.unwrap().unwrap();
    answer.message_response.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_and_health_turns_not_serving_as_the_node_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::task::spawn_blocking({
        let data = dir.path().to_path_buf();
        move || NodeProcess::start_in(&data)
    })
    .await
    .unwrap();
    let channel = tonic::transport::Endpoint::new(node.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Health: the server and woof's service are SERVING; others unknown.
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "woof.v1.Woof"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection: the services, and woof's file descriptor by symbol.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut reflection, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["woof.v1.Woof", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &mut reflection,
        MessageRequest::FileContainingSymbol("woof.v1.Woof".into()),
    )
    .await
    else {
        panic!("not a file descriptor");
    };
    let woof = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).unwrap())
        .find(|f| f.package() == "woof.v1")
        .expect("woof.v1's file");
    let service = woof
        .service
        .iter()
        .find(|s| s.name() == "Woof")
        .expect("the Woof service");
    assert!(
        service.method.iter().any(|m| m.name() == "Append"),
        "{service:?}"
    );

    // A graceful stop: the health turns NOT_SERVING while the port is
    // still open, then the port closes and the node exits cleanly.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let addr: std::net::SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    let closed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let watcher = std::thread::spawn({
        let closed_at = closed_at.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
                {
                    *closed_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a health update within 10 s")
        .unwrap()
        .unwrap();
    let not_serving_at = Instant::now();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    watcher.join().unwrap();
    let closed_at = closed_at.lock().unwrap().expect("the port closed");
    assert!(
        not_serving_at < closed_at,
        "NOT_SERVING came {:?} after the port closed",
        not_serving_at - closed_at
    );
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A node whose disk refuses writes: its process may not grow a file past
/// 4 MiB (RLIMIT_FSIZE, with SIGXFSZ ignored, so a write past it fails
/// with EFBIG as on a full disk), so its write-ahead log soon cannot grow.
/// The append that fails is refused with a clear error, the health turns
/// NOT_SERVING, what was acknowledged before is still read, and the node
/// keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_the_storage_fails() {
    use std::os::unix::process::CommandExt;
    const FILE_BYTES_MAX: libc::rlim_t = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let node = tokio::task::spawn_blocking({
        let data = dir.path().join("n");
        move || {
            NodeProcess::start_with(
                &[
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--grpc-listen",
                    "127.0.0.1:0",
                ],
                |command| {
                    // SAFETY: only async-signal-safe calls between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            let limit = libc::rlimit {
                                rlim_cur: FILE_BYTES_MAX,
                                rlim_max: FILE_BYTES_MAX,
                            };
                            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
                            {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                },
            )
        }
    })
    .await
    .unwrap();
    let channel = tonic::transport::Endpoint::new(node.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |mut h: HealthClient<tonic::transport::Channel>| async move {
        h.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
    };
    assert_eq!(status(health.clone()).await, ServingStatus::Serving as i32);

    let mut client = connect(&node.url).await;
    let topic = "disk/full";
    create(&mut client, topic, 64 * 1024, 0).await;
    let mut acked = Vec::new();
    let refused = loop {
        let payload = vec![acked.len() as u8; 60 * 1024];
        match client
            .append(v1::AppendRequest {
                topic: topic.into(),
                payload: payload.clone().into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => acked.push((r.into_inner().seq, payload)),
            Err(e) => break e,
        }
        // 4 MiB of log holds fewer than 70 such elements.
        assert!(acked.len() < 200, "200 appends of 60 KiB were all written");
    };
    assert!(!acked.is_empty(), "the first append failed: {refused:?}");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Internal
        ),
        "{refused:?}"
    );
    assert!(
        refused.message().to_lowercase().contains("stor")
            || refused.message().to_lowercase().contains("write"),
        "says what failed: {refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(health.clone()).await != ServingStatus::NotServing as i32 {
        assert!(
            Instant::now() < deadline,
            "health still SERVING 10 s after the storage failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watched = health
        .check(HealthCheckRequest {
            service: "woof.v1.Woof".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(watched, ServingStatus::NotServing as i32);
    // What was acknowledged is still there.
    for (seq, payload) in [&acked[0], acked.last().unwrap()] {
        let element = get(&mut client, topic, *seq).await.unwrap();
        assert_eq!(element.payload.as_ref(), payload.as_slice(), "#{seq}");
    }
    eprintln!(
        "{} appends acknowledged before the storage failed: {refused:?}",
        acked.len()
    );
}
