//! The `woof.v1.Woof` gRPC service over the node's [`TopicApi`]; a
//! producer's appends on one stream in [`append_stream`]; beside it, in
//! [`health`], `grpc.health.v1` and server reflection.
//!
//! Each request is handled in a span ([`request_span`]) with fields `rpc`,
//! `peer` (the client's address) and `topic` (recorded by the method, when
//! the request names one), so every line it logs carries them.

pub mod append_stream;
pub mod convert;
pub mod health;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use woof_consensus::local::SCAN_LIMIT_MAX;
use woof_consensus::topic::handlers::Handler;
use woof_proto::v1::{self, woof_server::Woof};

use crate::api::TopicApi;
use crate::auth::{Authority, Grant, Op, Scope};
use crate::cluster::Cluster;
use crate::shutdown::Shutdown;
use convert::node_status as status;

/// Subscriptions one node serves at once; past this, RESOURCE_EXHAUSTED.
pub const SUBSCRIBERS_MAX: usize = 10_000;
/// Append streams one node serves at once; past this, RESOURCE_EXHAUSTED.
pub const APPEND_STREAMS_MAX: usize = 10_000;
/// Elements buffered per subscriber stream: a slow reader holds back its own
/// reading from storage, nothing else.
const SUBSCRIBER_BUFFER: usize = 64;
/// Elements read from storage per step of a subscription.
const SUBSCRIBER_BATCH: usize = 256;
/// A scan's limit when the request leaves it at 0.
const SCAN_LIMIT_DEFAULT: u32 = 100;
/// The longest peer id a request may name (a libp2p peer id is 52).
const NODE_ID_MAX: usize = 128;

/// The span a gRPC request is handled in: `rpc` (`woof.v1.Woof/Append`),
/// `peer` (the client's address) and `topic`, left empty for the method to
/// record ([`in_topic`]).
pub fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let rpc = request.uri().path().trim_start_matches('/');
    let peer = request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            request
                .extensions()
                .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        });
    match peer {
        Some(peer) => {
            tracing::info_span!("rpc", rpc, %peer, topic = tracing::field::Empty)
        }
        None => tracing::info_span!(
            "rpc",
            rpc,
            peer = tracing::field::Empty,
            topic = tracing::field::Empty
        ),
    }
}

/// Records the topic a request is about in its span.
fn in_topic(topic: &str) {
    tracing::Span::current().record("topic", topic);
}

/// The service: a thin translation onto [`TopicApi`].
pub struct Service {
    topics: TopicApi,
    cluster: Cluster,
    subscribers: Arc<Semaphore>,
    append_streams: Arc<Semaphore>,
    /// Each subscription is a task feeding its stream: they end on this
    /// signal, and the server waits for them (they hold the topics, and so
    /// the store).
    shutdown: Shutdown,
    /// Appends per topic and subscribers are counted here.
    metrics: crate::metrics::Metrics,
    /// With `--require-token`: checks every request's token.
    auth: Option<Arc<Authority>>,
    /// The CA this node trusts when it calls another node's API.
    client_tls: Option<crate::auth::tls::ClientTls>,
}

impl Service {
    pub fn new(topics: TopicApi, cluster: Cluster, shutdown: Shutdown) -> Self {
        Self {
            topics,
            cluster,
            subscribers: Arc::new(Semaphore::new(SUBSCRIBERS_MAX)),
            append_streams: Arc::new(Semaphore::new(APPEND_STREAMS_MAX)),
            shutdown,
            metrics: Default::default(),
            auth: None,
            client_tls: None,
        }
    }

    /// Requires a token granting each request's operation
    /// (`--require-token`).
    pub fn with_auth(mut self, auth: Option<Arc<Authority>>) -> Self {
        self.auth = auth;
        self
    }

    /// Trusts this CA when calling other nodes (their API is TLS).
    pub fn with_client_tls(mut self, tls: Option<crate::auth::tls::ClientTls>) -> Self {
        self.client_tls = tls;
        self
    }

    /// Checks the request's token grants `op` on `scope`; `None` when the
    /// node does not require tokens. Every method calls this first.
    fn allow<T>(
        &self,
        request: &Request<T>,
        op: Op,
        scope: Scope,
    ) -> Result<Option<Grant>, Status> {
        match &self.auth {
            None => Ok(None),
            Some(auth) => auth.check(request.metadata(), op, scope).map(Some),
        }
    }

    /// Checks the token grants `deploy` on the handler's topic.
    fn allow_deploy(&self, request: &Request<v1::DeployHandlerRequest>) -> Result<(), Status> {
        let topic = request
            .get_ref()
            .handler
            .as_ref()
            .map_or("", |h| h.topic.as_str());
        self.allow(request, Op::Deploy, Scope::Topic(topic))
            .map(drop)
    }

    /// The topics of a listing the request's token may read.
    fn readable(&self, grant: &Option<Grant>, topics: Vec<v1::TopicInfo>) -> Vec<v1::TopicInfo> {
        match (&self.auth, grant) {
            (Some(auth), Some(grant)) => topics
                .into_iter()
                .filter(|t| auth.allowed(grant, Op::Read, Scope::Topic(&t.name)).is_ok())
                .collect(),
            _ => topics,
        }
    }

    /// Counts into `metrics` (else into metrics nobody reads).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Service {
    /// Every topic this node can see, as the API describes them.
    async fn topic_infos(&self) -> Result<Vec<v1::TopicInfo>, Status> {
        Ok(self
            .topics
            .list()
            .await
            .map_err(status)?
            .into_iter()
            .map(convert::topic_info)
            .collect())
    }
}

impl Service {
    /// The answer to a deploy or update: the handler with its lag.
    async fn deployed(&self, topic: &str, h: &Handler) -> Response<v1::DeployHandlerResponse> {
        let last = self.topics.latest(topic).await.map_or(0, |r| r.last);
        let runs_on = self.runs_on(topic, &h.spec.placement).await;
        Response::new(v1::DeployHandlerResponse {
            handler: Some(convert::handler(topic, h, last, &runs_on)),
        })
    }

    /// Where a handler of `topic` placed by `placement` runs now (empty:
    /// nowhere, no live node matches; or unknown).
    async fn runs_on(&self, topic: &str, placement: &str) -> Vec<String> {
        match &self.topics {
            TopicApi::Cluster(api) => api.placed_on(topic, placement).await.unwrap_or_default(),
            TopicApi::Local(_) => Vec::new(),
        }
    }
}

/// Appends one element, as `Append` does: the unary call and each request
/// of an append stream (its token already checked).
async fn append_one(
    topics: &TopicApi,
    metrics: &crate::metrics::Metrics,
    r: v1::AppendRequest,
) -> Result<v1::AppendResponse, Status> {
    let producer = convert::producer(r.producer)?;
    let bytes = r.payload.len() as u64;
    let appended = if r.handler.is_empty() {
        topics.append(&r.topic, vec![r.payload], producer).await
    } else {
        topics
            .append_for(&r.topic, vec![r.payload], producer, r.handler)
            .await
    };
    let outcome = appended.map_err(status)?;
    if !outcome.duplicate {
        metrics.appended(&r.topic, 1, bytes);
    }
    Ok(v1::AppendResponse {
        seq: outcome.first_seq,
        duplicate: outcome.duplicate,
    })
}

type AnswerStream = Pin<Box<dyn Stream<Item = append_stream::Answer> + Send>>;
type ElementStream = Pin<Box<dyn Stream<Item = Result<v1::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Woof for Service {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Topic(&request.get_ref().name))?;
        let r = request.into_inner();
        in_topic(&r.name);
        let config = convert::config(r.config)?;
        let info = self
            .topics
            .create(&r.name, config, r.replication, &r.replicas)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(convert::topic_info(info)),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().name))?;
        let name = request.into_inner().name;
        in_topic(&name);
        let info = self.topics.describe(&name).await.map_err(status)?;
        Ok(Response::new(v1::DescribeTopicResponse {
            topic: Some(convert::topic_info(info)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let grant = self.allow(&request, Op::Read, Scope::Listing)?;
        let topics = self.readable(&grant, self.topic_infos().await?);
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Topic(&request.get_ref().name))?;
        let name = request.into_inner().name;
        in_topic(&name);
        self.topics.delete(&name).await.map_err(status)?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        self.allow(&request, Op::Append, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let appended = append_one(&self.topics, &self.metrics, r).await?;
        Ok(Response::new(appended))
    }

    type AppendStreamStream = AnswerStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<v1::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let auth = match &self.auth {
            None => None,
            Some(auth) => Some((auth.clone(), auth.authenticate(request.metadata())?)),
        };
        let permit = self
            .append_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this node serves at most {APPEND_STREAMS_MAX} append streams at once"
                ))
            })?;
        let (tx, rx) = mpsc::channel(append_stream::ANSWERS_BUFFERED);
        let appender = append_stream::Appender {
            topics: self.topics.clone(),
            metrics: self.metrics.clone(),
            auth,
        };
        let shutdown = self.shutdown.clone();
        let inbound = request.into_inner();
        self.shutdown.spawn(
            async move {
                let _permit = permit;
                appender.run(inbound, tx, shutdown).await;
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append_batch(
        &self,
        request: Request<v1::AppendBatchRequest>,
    ) -> Result<Response<v1::AppendBatchResponse>, Status> {
        self.allow(&request, Op::Append, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let producer = convert::producer(r.producer)?;
        let bytes = r.payloads.iter().map(|p| p.len() as u64).sum();
        let appended = if r.handler.is_empty() {
            self.topics.append(&r.topic, r.payloads, producer).await
        } else {
            self.topics
                .append_for(&r.topic, r.payloads, producer, r.handler)
                .await
        };
        let outcome = appended.map_err(status)?;
        if !outcome.duplicate {
            self.metrics.appended(&r.topic, outcome.count, bytes);
        }
        Ok(Response::new(v1::AppendBatchResponse {
            first_seq: outcome.first_seq,
            count: outcome.count,
            duplicate: outcome.duplicate,
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let e = self.topics.get(&r.topic, r.seq).await.map_err(status)?;
        Ok(Response::new(v1::GetResponse {
            element: Some(convert::element(e)),
        }))
    }

    async fn latest(
        &self,
        request: Request<v1::LatestRequest>,
    ) -> Result<Response<v1::LatestResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        let topic = request.into_inner().topic;
        in_topic(&topic);
        let range = self.topics.latest(&topic).await.map_err(status)?;
        Ok(Response::new(v1::LatestResponse {
            last_seq: range.last,
            first_seq: range.first,
        }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let limit = if r.limit == 0 {
            SCAN_LIMIT_DEFAULT
        } else {
            r.limit.min(SCAN_LIMIT_MAX + 1)
        };
        let elements = self
            .topics
            .scan(&r.topic, r.from_seq, limit)
            .await
            .map_err(status)?;
        let next_seq = elements.last().map_or(r.from_seq, |e| e.seq + 1);
        Ok(Response::new(v1::ScanResponse {
            elements: elements.into_iter().map(convert::element).collect(),
            next_seq,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let grant = self.allow(&request, Op::Read, Scope::Listing)?;
        let nodes = self
            .cluster
            .status()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let topics = self.readable(&grant, self.topic_infos().await?);
        Ok(Response::new(v1::ClusterStatusResponse { nodes, topics }))
    }

    async fn deploy_handler(
        &self,
        request: Request<v1::DeployHandlerRequest>,
    ) -> Result<Response<v1::DeployHandlerResponse>, Status> {
        self.allow_deploy(&request)?;
        let r = request.into_inner();
        let (topic, spec) = convert::handler_spec(r.handler)?;
        in_topic(&topic);
        let from = convert::from(r.from_seq, r.from_earliest);
        let h = self
            .topics
            .deploy_handler(&topic, spec, from)
            .await
            .map_err(status)?;
        Ok(self.deployed(&topic, &h).await)
    }

    async fn update_handler(
        &self,
        request: Request<v1::DeployHandlerRequest>,
    ) -> Result<Response<v1::DeployHandlerResponse>, Status> {
        self.allow_deploy(&request)?;
        let r = request.into_inner();
        let (topic, spec) = convert::handler_spec(r.handler)?;
        in_topic(&topic);
        let h = self
            .topics
            .update_handler(&topic, spec)
            .await
            .map_err(status)?;
        Ok(self.deployed(&topic, &h).await)
    }

    async fn list_handlers(
        &self,
        request: Request<v1::ListHandlersRequest>,
    ) -> Result<Response<v1::ListHandlersResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        let topic = request.into_inner().topic;
        in_topic(&topic);
        let (handlers, last) = self.topics.handlers(&topic).await.map_err(status)?;
        let mut listed = Vec::with_capacity(handlers.len());
        for h in handlers.iter() {
            let runs_on = self.runs_on(&topic, &h.spec.placement).await;
            listed.push(convert::handler(&topic, h, last, &runs_on));
        }
        Ok(Response::new(v1::ListHandlersResponse { handlers: listed }))
    }

    async fn resume_handler(
        &self,
        request: Request<v1::RemoveHandlerRequest>,
    ) -> Result<Response<v1::DeployHandlerResponse>, Status> {
        self.allow(&request, Op::Deploy, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let h = self
            .topics
            .resume_handler(&r.topic, &r.name)
            .await
            .map_err(status)?;
        Ok(self.deployed(&r.topic, &h).await)
    }

    async fn handler_logs(
        &self,
        request: Request<v1::HandlerLogsRequest>,
    ) -> Result<Response<v1::HandlerLogsResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        // Passed on if the records are on another node: it checks the
        // client's token itself (ADR 0019).
        let bearer = crate::cli::Bearer::from_request(request.metadata());
        let r = request.into_inner();
        in_topic(&r.topic);
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let (handlers, _) = self.topics.handlers(&r.topic).await.map_err(status)?;
        let Some(placement) = handlers
            .iter()
            .find(|h| h.spec.name == r.name)
            .map(|h| h.spec.placement.clone())
        else {
            return Err(Status::not_found(format!(
                "no handler {:?} is bound to topic {:?}",
                r.name, r.topic
            )));
        };
        if r.node.len() > NODE_ID_MAX {
            return Err(Status::invalid_argument(format!(
                "a node's peer id is at most {NODE_ID_MAX} characters"
            )));
        }
        let here = self.cluster.peer_id();
        let name = woof_consensus::topic::TopicName::new(&r.topic)
            .map_err(|e| status(crate::error::Error::Log(e)))?;
        let asked_here = r.node.is_empty() || r.node == here;
        if let Some(book) = self
            .topics
            .journal()
            .filter(|_| asked_here)
            .and_then(|j| j.read(&name, &r.name, r.after, limit))
        {
            return Ok(Response::new(convert::handler_logs(&here, book)));
        }
        if r.here_only {
            return Ok(Response::new(v1::HandlerLogsResponse::default()));
        }
        // Placed on several nodes (`all(...)`), each keeps its own records:
        // the asked node's, else this node's if it runs one, else the first
        // placed node's.
        let placed = self.runs_on(&r.topic, &placement).await;
        let runs_on = match r.node.as_str() {
            "" if placed.contains(&here) => String::new(),
            "" => placed.first().cloned().unwrap_or_default(),
            asked => asked.to_string(),
        };
        if runs_on.is_empty() || runs_on == here {
            return Ok(Response::new(v1::HandlerLogsResponse::default()));
        }
        // Its records are on the node that runs it: ask that node.
        let nodes = self.cluster.status().await.map_err(status)?;
        let Some(there) = nodes
            .into_iter()
            .find(|n| n.peer_id == runs_on && !n.grpc_addr.is_empty())
        else {
            return Err(Status::unavailable(format!(
                "this node does not know the address of {runs_on}, whose records were asked for"
            )));
        };
        let options = crate::cli::ClientOptions {
            tls: self.client_tls.clone(),
            bearer,
        };
        let mut client = crate::cli::connect_with(&there.grpc_addr, &options)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        client
            .handler_logs(v1::HandlerLogsRequest {
                here_only: true,
                ..r
            })
            .await
    }

    async fn trace(
        &self,
        request: Request<v1::TraceRequest>,
    ) -> Result<Response<v1::TraceResponse>, Status> {
        self.allow(&request, Op::Read, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let trace = self.topics.trace(&r.topic, r.seq).await.map_err(status)?;
        Ok(Response::new(convert::trace(trace)))
    }

    async fn remove_handler(
        &self,
        request: Request<v1::RemoveHandlerRequest>,
    ) -> Result<Response<v1::RemoveHandlerResponse>, Status> {
        self.allow(&request, Op::Deploy, Scope::Topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        in_topic(&r.topic);
        self.topics
            .remove_handler(&r.topic, &r.name)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RemoveHandlerResponse {}))
    }

    async fn add_device(
        &self,
        request: Request<v1::AddDeviceRequest>,
    ) -> Result<Response<v1::AddDeviceResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Cluster)?;
        let r = request.into_inner();
        let key = match r.key.as_str() {
            "" => None,
            k => Some(crate::devices::registry::parse_key(k).map_err(status)?),
        };
        let api = self.topics.cluster().map_err(status)?;
        if r.fleet > 0 {
            let fleet_key = match key {
                Some(k) => k,
                None => crate::devices::registry::new_key().map_err(status)?,
            };
            api.device_fleet(&r.id, r.fleet, &r.topics, &r.subscribe, fleet_key)
                .await
                .map_err(status)?;
            let first = format!("{}-1", r.id);
            let registry = api.devices().await.map_err(status)?;
            return Ok(Response::new(v1::AddDeviceResponse {
                device: registry.get(&first).map(convert::device),
                key: crate::devices::registry::key_hex(&fleet_key),
            }));
        }
        let device = api
            .device_add(&r.id, &r.topics, &r.subscribe, key)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::added_device(&device)))
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Cluster)?;
        let registry = self
            .topics
            .cluster()
            .map_err(status)?
            .devices()
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListDevicesResponse {
            devices: registry.devices().map(convert::device).collect(),
        }))
    }

    async fn remove_device(
        &self,
        request: Request<v1::RemoveDeviceRequest>,
    ) -> Result<Response<v1::RemoveDeviceResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Cluster)?;
        self.topics
            .cluster()
            .map_err(status)?
            .device_remove(&request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RemoveDeviceResponse {}))
    }

    async fn rotate_device(
        &self,
        request: Request<v1::RemoveDeviceRequest>,
    ) -> Result<Response<v1::AddDeviceResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Cluster)?;
        let device = self
            .topics
            .cluster()
            .map_err(status)?
            .device_rotate(&request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::added_device(&device)))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        self.allow(&request, Op::Admin, Scope::Cluster)?;
        let id = request.into_inner().id;
        let Some(bytes) = crate::auth::unhex(&id) else {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a token id (hex, from `woof token inspect`)"
            )));
        };
        crate::auth::revocation::revoke(&self.topics, bytes.clone())
            .await
            .map_err(status)?;
        // This node refuses it at once; the others within their next read
        // of the list.
        if let Some(auth) = &self.auth {
            auth.revoked().insert(bytes);
        }
        tracing::info!(id, "token revoked");
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    type SubscribeStream = ElementStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.allow(
            &request,
            Op::Subscribe,
            Scope::Topic(&request.get_ref().topic),
        )?;
        let r = request.into_inner();
        in_topic(&r.topic);
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node serves at most {SUBSCRIBERS_MAX} subscriptions at once"
            ))
        })?;
        let mut subscription = self
            .topics
            .subscribe(&r.topic, convert::start(r.start))
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let shutdown = self.shutdown.clone();
        let counted = self.metrics.subscribed();
        self.shutdown.spawn(
            async move {
                let _permit = permit;
                let _counted = counted;
                let stopping = || {
                    // Tell the client to resume elsewhere, without waiting for
                    // room in its buffer.
                    let _ = tx.try_send(Err(Status::unavailable("the node is stopping")));
                };
                loop {
                    let batch = tokio::select! {
                        batch = subscription.next_batch(SUBSCRIBER_BATCH) => batch,
                        // The client went away while we waited for appends.
                        _ = tx.closed() => return,
                        _ = shutdown.requested() => return stopping(),
                    };
                    match batch {
                        Ok(elements) => {
                            for e in elements {
                                let item = v1::SubscribeResponse {
                                    element: Some(convert::element(e)),
                                };
                                tokio::select! {
                                    sent = tx.send(Ok(item)) => if sent.is_err() {
                                        return;
                                    },
                                    // A slow client does not hold the node up.
                                    _ = shutdown.requested() => return stopping(),
                                }
                            }
                        }
                        Err(e) => {
                            tokio::select! {
                                _ = tx.send(Err(status(e))) => {}
                                _ = shutdown.requested() => {}
                            }
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
