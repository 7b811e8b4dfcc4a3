//! The web dashboard on `--http-listen`: one page bundled in the binary
//! (no external asset: its content security policy forbids any), and the
//! live views it reads as server-sent events.
//!
//! The views are built by calling this node's gRPC service in-process
//! (ADR 22), with the token the browser gives (`?token=` or
//! `authorization: Bearer`): the dashboard sees what that token may see,
//! through the same checks as every client, and adds no API of its own.
//!
//! Routes (GET only):
//! - `/`: the page.
//! - `/api/view`: one view, JSON ([`view::View`]).
//! - `/api/events`: a view every second, as `view` events; a refusal as a
//!   `failure` event (`{"code", "message"}`), after which an
//!   UNAUTHENTICATED or PERMISSION_DENIED stream ends.
//! - `/api/tail?topic=NAME`: the topic's last elements, then each new one,
//!   as `elements` events (at most [`TAIL_BATCH_MAX`] every
//!   [`TAIL_EVERY`]; a faster topic's others are counted as `skipped`).
//!
//! Layout: this file serves; [`view`] arranges the API's answers.

pub mod view;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Code, Status};
use woof_proto::v1;
use woof_proto::v1::woof_server::Woof;

use crate::grpc::Service;
use crate::shutdown::Shutdown;
use view::{Rates, View};

/// Browsers (and scripts) served at once, and how long one connection
/// stays open; an event stream cut by the limit is reopened by the page.
const LIMITS: crate::http::Limits = crate::http::Limits {
    connections: 32,
    connection_time: Duration::from_secs(600),
};
/// How often a view is sent.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Handlers and devices are asked for every this many views.
const SLOW_EVERY: u64 = 5;
/// Topics whose handlers are listed.
const HANDLER_TOPICS_MAX: usize = 100;
/// Handler listings asked for at once.
const HANDLER_ASKS_AT_ONCE: usize = 8;
/// Elements a tail sends at once, and how often.
pub const TAIL_BATCH_MAX: usize = 50;
pub const TAIL_EVERY: Duration = Duration::from_millis(250);
/// Elements a tail shows from before it opened.
const TAIL_BACKLOG: u64 = 20;
/// The longest query string taken (a token is at most 4 KiB).
const QUERY_BYTES_MAX: usize = 8 * 1024;
/// Events waiting for a slow browser.
const EVENTS_BUFFERED: usize = 4;

/// The page: HTML, style and script in one file.
const PAGE: &str = include_str!("page.html");
/// Nothing but this page's own inline style and script, and requests to
/// this node.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; connect-src 'self'; \
     script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:";

type Body = BoxBody<Bytes, Infallible>;

/// Serves the dashboard on `listener` (HTTPS with `tls`: the node's
/// certificate) until `shutdown` is requested; each connection is a task
/// on `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    service: Arc<Service>,
    shutdown: Shutdown,
) {
    let tasks = shutdown.clone();
    crate::http::serve("dashboard", listener, tls, LIMITS, shutdown, move |req| {
        answer(service.clone(), tasks.clone(), req)
    })
    .await
}

async fn answer(service: Arc<Service>, tasks: Shutdown, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard answers GET only\n",
        );
    }
    let asked = match Asked::read(&req) {
        Ok(a) => a,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    match req.uri().path() {
        "/" | "/index.html" => {
            let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            r
        }
        "/api/view" => {
            let mut rates = Rates::default();
            match take_view(&service, &asked, &mut rates, true, None).await {
                Ok(view) => json(StatusCode::OK, &view),
                Err(status) => json(http_status(&status), &Failure::from(&status)),
            }
        }
        "/api/events" => events(&tasks, |tx, stop| views(service, asked, tx, stop)),
        "/api/tail" => match asked.topic.clone() {
            Some(topic) => events(&tasks, |tx, stop| tail(service, asked, topic, tx, stop)),
            None => plain(
                StatusCode::BAD_REQUEST,
                "say which topic: /api/tail?topic=NAME\n",
            ),
        },
        _ => plain(
            StatusCode::NOT_FOUND,
            "the dashboard is at /; its views at /api/view, /api/events, /api/tail\n",
        ),
    }
}

/// What a request asks: its token, and the topic of a tail.
#[derive(Debug, Clone, Default)]
struct Asked {
    token: Option<String>,
    topic: Option<String>,
}

impl Asked {
    fn read(req: &Request<Incoming>) -> Result<Self, String> {
        let query = req.uri().query().unwrap_or("");
        if query.len() > QUERY_BYTES_MAX {
            return Err(format!(
                "a query of {} bytes is too long (at most {QUERY_BYTES_MAX})",
                query.len()
            ));
        }
        let mut asked = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decoded(value)?;
            match key {
                "token" if !value.is_empty() => asked.token = Some(value),
                "topic" => asked.topic = Some(value),
                _ => {}
            }
        }
        if let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) {
            let text = value
                .to_str()
                .map_err(|_| "the authorization header is not text".to_string())?;
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or("the authorization header must be `Bearer TOKEN`")?;
            asked.token = Some(token.to_string());
        }
        Ok(asked)
    }

    /// `message` as a gRPC request carrying the token.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Status> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::unauthenticated("the token is not text a header can hold"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// Decodes `%XX` and `+` in a query value.
fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("a bad %-escape in the query at byte {i}"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the query is not UTF-8".to_string())
}

/// A refusal, as the page reads it.
#[derive(Debug, Serialize)]
struct Failure {
    code: String,
    message: String,
}

impl From<&Status> for Failure {
    fn from(status: &Status) -> Self {
        Self {
            code: code_name(status.code()),
            message: status.message().to_string(),
        }
    }
}

/// `PERMISSION_DENIED`, as gRPC spells codes.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn http_status(status: &Status) -> StatusCode {
    match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether a stream refused with this code should end (asking again
/// cannot help until the user gives another token).
fn ends_stream(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::InvalidArgument
    )
}

/// One view: the cluster status, and, when `slow` (else carried over from
/// `before`), the handlers and devices.
async fn take_view(
    service: &Service,
    asked: &Asked,
    rates: &mut Rates,
    slow: bool,
    before: Option<&View>,
) -> Result<View, Status> {
    let status = service
        .cluster_status(asked.request(v1::ClusterStatusRequest {})?)
        .await?
        .into_inner();
    let mut view = View::new(status, rates);
    match (slow, before) {
        (false, Some(before)) => {
            view.handlers = before.handlers.clone();
            view.devices = before.devices.clone();
            view.devices_error = before.devices_error.clone();
        }
        _ => {
            view.handlers = handlers(service, asked, &view).await;
            match service
                .list_devices(asked.request(v1::ListDevicesRequest {})?)
                .await
            {
                Ok(listed) => {
                    view.devices = listed
                        .into_inner()
                        .devices
                        .into_iter()
                        .take(view::DEVICES_SHOWN_MAX)
                        .map(view::device)
                        .collect();
                }
                Err(status) => view.devices_error = Some(status.message().to_string()),
            }
        }
    }
    Ok(view)
}

/// The handlers of the view's first [`HANDLER_TOPICS_MAX`] topics (those a
/// topic's listing refuses are left out).
async fn handlers(service: &Service, asked: &Asked, view: &View) -> Vec<view::Handler> {
    let topics: Vec<String> = view
        .topics
        .iter()
        .take(HANDLER_TOPICS_MAX)
        .map(|t| t.name.clone())
        .collect();
    let listed: Vec<Vec<v1::Handler>> = futures::stream::iter(topics)
        .map(|topic| async move {
            let Ok(request) = asked.request(v1::ListHandlersRequest { topic }) else {
                return Vec::new();
            };
            match service.list_handlers(request).await {
                Ok(listed) => listed.into_inner().handlers,
                Err(_) => Vec::new(),
            }
        })
        .buffered(HANDLER_ASKS_AT_ONCE)
        .collect()
        .await;
    listed
        .into_iter()
        .flatten()
        .take(view::HANDLERS_SHOWN_MAX)
        .map(view::handler)
        .collect()
}

/// Where an event stream's task sends, and its stop signal.
type Events = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A server-sent event stream fed by `feed`, a task on `tasks` that ends
/// when the browser goes away or the node stops.
fn events<F, Fut>(tasks: &Shutdown, feed: F) -> Response<Body>
where
    F: FnOnce(Events, Shutdown) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(EVENTS_BUFFERED);
    tasks.spawn(feed(tx, tasks.clone()));
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Sends one event; false when the browser has gone or the node stops.
async fn send(tx: &Events, stop: &Shutdown, event: &str, data: &impl Serialize) -> bool {
    let Ok(data) = serde_json::to_string(data) else {
        return false;
    };
    let frame = Frame::data(Bytes::from(format!("event: {event}\ndata: {data}\n\n")));
    tokio::select! {
        sent = tx.send(Ok(frame)) => sent.is_ok(),
        () = stop.requested() => false,
    }
}

/// Waits `period`; false when the browser has gone or the node stops.
async fn pause(tx: &Events, stop: &Shutdown, period: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(period) => true,
        () = tx.closed() => false,
        () = stop.requested() => false,
    }
}

/// A view every [`REFRESH`].
async fn views(service: Arc<Service>, asked: Asked, tx: Events, stop: Shutdown) {
    let mut rates = Rates::default();
    let mut last: Option<View> = None;
    for n in 0u64.. {
        let slow = n % SLOW_EVERY == 0;
        match take_view(&service, &asked, &mut rates, slow, last.as_ref()).await {
            Ok(view) => {
                if !send(&tx, &stop, "view", &view).await {
                    return;
                }
                last = Some(view);
            }
            Err(status) => {
                if !send(&tx, &stop, "failure", &Failure::from(&status)).await
                    || ends_stream(&status)
                {
                    return;
                }
            }
        }
        if !pause(&tx, &stop, REFRESH).await {
            return;
        }
    }
}

/// What a tail sends at once.
#[derive(Debug, Serialize)]
struct Tail {
    elements: Vec<view::Element>,
    /// Elements not sent because more came than a batch holds.
    skipped: u64,
}

/// A topic's last [`TAIL_BACKLOG`] elements, then each new one.
async fn tail(service: Arc<Service>, asked: Asked, topic: String, tx: Events, stop: Shutdown) {
    let started = async {
        let latest = service
            .latest(asked.request(v1::LatestRequest {
                topic: topic.clone(),
            })?)
            .await?
            .into_inner();
        let start = if latest.last_seq == 0 {
            v1::subscribe_request::Start::Earliest(true)
        } else {
            let from = latest
                .last_seq
                .saturating_sub(TAIL_BACKLOG - 1)
                .max(latest.first_seq)
                .max(1);
            v1::subscribe_request::Start::FromSeq(from)
        };
        let stream = service
            .subscribe(asked.request(v1::SubscribeRequest {
                topic: topic.clone(),
                start: Some(start),
            })?)
            .await?
            .into_inner();
        Ok::<_, Status>(stream)
    };
    let mut stream = match started.await {
        Ok(s) => s,
        Err(status) => {
            send(&tx, &stop, "failure", &Failure::from(&status)).await;
            return;
        }
    };
    loop {
        // Wait for one, then take what else has come, keeping the newest.
        let first = tokio::select! {
            next = stream.next() => next,
            () = tx.closed() => return,
            () = stop.requested() => return,
        };
        let mut batch = Vec::new();
        let mut skipped = 0u64;
        let mut ended = None;
        let mut next = first;
        loop {
            match next {
                Some(Ok(item)) => {
                    if let Some(e) = item.element {
                        if batch.len() == TAIL_BATCH_MAX {
                            batch.remove(0);
                            skipped += 1;
                        }
                        batch.push(view::element(e));
                    }
                }
                Some(Err(status)) => {
                    ended = Some(status);
                    break;
                }
                None => {
                    ended = Some(Status::unavailable("the subscription ended"));
                    break;
                }
            }
            match stream.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        if !batch.is_empty()
            && !send(
                &tx,
                &stop,
                "elements",
                &Tail {
                    elements: batch,
                    skipped,
                },
            )
            .await
        {
            return;
        }
        if let Some(status) = ended {
            send(&tx, &stop, "failure", &Failure::from(&status)).await;
            return;
        }
        if !pause(&tx, &stop, TAIL_EVERY).await {
            return;
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", text.to_string())
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(text) => respond(status, "application/json", text),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded_and_bad_escapes_refused() {
        assert_eq!(
            percent_decoded("farm%2Fnorth%2Ft+1").unwrap(),
            "farm/north/t 1"
        );
        assert!(percent_decoded("a%2").is_err());
        assert!(percent_decoded("a%zz").is_err());
        assert!(percent_decoded("%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
        assert!(PAGE.contains("/api/events"));
    }
}
