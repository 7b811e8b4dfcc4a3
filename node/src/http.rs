//! The node's small HTTP/1.1 servers (hyper): `/metrics` and the dashboard.
//! Both bound the connections served at once and how long one stays open;
//! the dashboard is HTTPS when the node has a certificate.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::shutdown::Shutdown;

/// How many connections a server takes at once, and for how long each.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub connections: usize,
    /// The longest a connection stays open (a browser's event stream
    /// reconnects by itself when it is cut).
    pub connection_time: Duration,
}

/// Serves HTTP/1.1 on `listener` (over TLS with `tls`), answering each
/// request with `answer`, until `shutdown` is requested. Each connection is
/// a task on `shutdown`, ended when it is requested: whoever awaits
/// `shutdown` waits for them.
pub async fn serve<F, Fut, B>(
    what: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: Limits,
    shutdown: Shutdown,
    answer: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let acquired = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            () = shutdown.requested() => return,
        };
        let Ok(permit) = acquired else {
            return;
        };
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait, do not spin.
                    tracing::warn!("{what}: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.requested() => return,
        };
        let answer = answer.clone();
        let stop = shutdown.clone();
        let tls = tls.clone().map(TlsAcceptor::from);
        shutdown.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let Some(tls) = tls else {
                return connection(what, socket, service, limits, stop).await;
            };
            let handshake = tokio::time::timeout(
                crate::auth::tls::HTTPS_HANDSHAKE_TIMEOUT,
                tls.accept(socket),
            );
            let socket = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(socket)) => socket,
                    Ok(Err(e)) => {
                        // Plain HTTP to this port ends here, say.
                        tracing::debug!("{what}: a TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("{what}: a TLS handshake took too long");
                        return;
                    }
                },
                () = stop.requested() => return,
            };
            connection(what, socket, service, limits, stop).await;
        });
    }
}

/// Serves one connection until it ends, its time is up, or `stop`.
async fn connection<IO, S, B>(
    what: &'static str,
    io: IO,
    service: S,
    limits: Limits,
    stop: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        served = conn => if let Err(e) = served {
            tracing::debug!("{what}: a connection ended: {e}");
        },
        () = tokio::time::sleep(limits.connection_time) => {}
        () = stop.requested() => {}
    }
}
