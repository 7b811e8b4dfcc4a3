//! `GET /metrics` over HTTP/1.1 (hyper), and the layer on the gRPC server
//! that times requests and counts the refused ones.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::{Metrics, Timed};
use crate::shutdown::Shutdown;

/// Scrape connections served at once, and how long one stays open.
const LIMITS: crate::http::Limits = crate::http::Limits {
    connections: 16,
    connection_time: Duration::from_secs(30),
};
/// What a scrape gets: OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `metrics` on `listener` until `shutdown` is requested.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: Shutdown) {
    crate::http::serve("metrics", listener, None, LIMITS, shutdown, move |req| {
        let metrics = metrics.clone();
        async move { answer(&metrics, req).await }
    })
    .await
}

async fn answer(metrics: &Metrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.render().await),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "woof serves its metrics at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// The tower layer on the gRPC server: times appends and reads, and counts
/// requests answered with an error status (those refused before any
/// message of a response; an error ending a stream is not seen here).
#[derive(Clone)]
pub struct RequestLayer(pub Metrics);

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Metrics,
}

/// Which latency a gRPC method counts into, by its path.
fn timed(path: &str) -> Option<Timed> {
    match path.strip_prefix("/woof.v1.Woof/")? {
        "Append" | "AppendBatch" => Some(Timed::Append),
        "Get" | "Latest" | "Scan" => Some(Timed::Read),
        _ => None,
    }
}

impl<S, B, R> tower::Service<Request<B>> for RequestMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    B: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let kind = timed(req.uri().path());
        let started = Instant::now();
        let answered = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answered.await?;
            // An error before any message is a "trailers-only" response:
            // its status is in the headers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            if code != 0 {
                metrics.rejected(code);
            } else if let Some(kind) = kind {
                metrics.observe(kind, started.elapsed());
            }
            Ok(response)
        })
    }
}
