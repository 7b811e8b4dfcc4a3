//! A plain HTTP/1.1 client for the tests (no client crate in the tree):
//! enough for `/metrics`, the dashboard and Prometheus's API.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// An answer: status code, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` and `body`; reads to the end (the
/// request says `Connection: close`), within 10 s.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    request_on(s, addr, method, path, headers, body).await
}

/// `GET path` over HTTPS, trusting the CA in the PEM file `ca`.
pub async fn https_get(
    addr: SocketAddr,
    ca: &std::path::Path,
    path: &str,
) -> std::io::Result<Answer> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let bad = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    request_on(s, addr, "GET", path, &[], "").await
}

/// Sends a request on `s` and reads its answer, as [`request`] does.
async fn request_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    // To the end of the body (by its length, its last chunk, or the end of
    // the connection): some servers keep the connection open regardless.
    let mut raw = Vec::new();
    let reading = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 || complete(&raw, &buf[..n]) {
                raw.extend_from_slice(&buf[..n]);
                return Ok::<_, std::io::Error>(());
            }
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let (status, headers) = parse_head(head);
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    request(addr, "GET", path, &[], "").await
}

/// Whether `before` and `more` together hold a whole answer.
fn complete(before: &[u8], more: &[u8]) -> bool {
    let raw = [before, more].concat();
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let (_, headers) = parse_head(&String::from_utf8_lossy(&raw[..end]));
    let body = &raw[end + 4..];
    if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        return len.parse::<usize>().is_ok_and(|len| body.len() >= len);
    }
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Reads server-sent events from `GET path` until `count` came, the
/// stream ended, or `wait` passed: each event's name and data.
pub async fn events(
    addr: SocketAddr,
    path: &str,
    count: usize,
    wait: Duration,
) -> std::io::Result<(Answer, Vec<(String, String)>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    // HTTP/1.0: the body is not chunked, events arrive as lines.
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut lines = BufReader::new(s).lines();
    let mut head = String::new();
    let mut events = Vec::new();
    let reading = async {
        while let Some(line) = lines.next_line().await? {
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        let (mut name, mut data) = (String::new(), String::new());
        while let Some(line) = lines.next_line().await? {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            } else if line.is_empty() && !name.is_empty() {
                events.push((std::mem::take(&mut name), std::mem::take(&mut data)));
                if events.len() == count {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    };
    // Past the wait: what came so far.
    if let Ok(read) = tokio::time::timeout(wait, reading).await {
        read?;
    }
    let (status, headers) = parse_head(&head);
    Ok((
        Answer {
            status,
            headers,
            body: String::new(),
        },
        events,
    ))
}
