//! How frames travel between a device and a gateway: UDP datagrams (one
//! frame each), or a byte stream, a TCP connection or a serial line, with
//! SLIP framing (`woof_mcu_bridge::stream`).
//!
//! [`Transport`] is an address as the user writes it: `udp://HOST:PORT`,
//! `tcp://HOST:PORT`, `serial:///dev/ttyUSB0[?baud=115200]`. [`framed`]
//! turns any byte stream into a pair of channels of whole frames, so the
//! gateway and the simulator deal in frames whatever the transport.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use woof_mcu_bridge::stream::{Deframer, encode, encoded_len_max};
use woof_mcu_bridge::wire::FRAME_LEN_MAX;

use crate::error::{Error, Result};

/// Frames queued to be written to one stream; past this they are dropped
/// (the device retransmits what matters).
pub const STREAM_QUEUE: usize = 64;
/// The serial speed when the address names none.
pub const BAUD_DEFAULT: u32 = 115_200;

/// Where a gateway listens, or where a device reaches one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Serial { path: PathBuf, baud: u32 },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Udp(a) => write!(f, "udp://{a}"),
            Transport::Tcp(a) => write!(f, "tcp://{a}"),
            Transport::Serial { path, baud } => {
                write!(f, "serial://{}?baud={baud}", path.display())
            }
        }
    }
}

impl Transport {
    /// One address; without a scheme it is UDP.
    pub fn parse(text: &str) -> Result<Transport> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").unwrap_or(("udp", text));
        let socket = |rest: &str| {
            rest.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{text:?} is not an address such as {scheme}://127.0.0.1:7900"
                    ))
                })
        };
        match scheme {
            "udp" => Ok(Transport::Udp(socket(rest)?)),
            "tcp" => Ok(Transport::Tcp(socket(rest)?)),
            "serial" => {
                let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                if !path.starts_with('/') {
                    return Err(Error::Usage(format!(
                        "{text:?}: a serial line is a device path such as serial:///dev/ttyUSB0"
                    )));
                }
                let baud = match query.strip_prefix("baud=") {
                    None if query.is_empty() => BAUD_DEFAULT,
                    Some(b) => b
                        .parse()
                        .ok()
                        .filter(|b| baud_flag(*b).is_some())
                        .ok_or_else(|| {
                            Error::Usage(format!(
                                "{text:?}: baud must be one of 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600"
                            ))
                        })?,
                    None => {
                        return Err(Error::Usage(format!(
                            "{text:?}: the only setting is ?baud=N"
                        )));
                    }
                };
                Ok(Transport::Serial {
                    path: path.into(),
                    baud,
                })
            }
            other => Err(Error::Usage(format!(
                "{text:?}: devices speak udp://, tcp:// or serial://, not {other}://"
            ))),
        }
    }

    /// Comma-separated addresses, 1 to 16 of them.
    pub fn parse_list(text: &str) -> Result<Vec<Transport>> {
        let list = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Transport::parse)
            .collect::<Result<Vec<_>>>()?;
        if list.is_empty() || list.len() > 16 {
            return Err(Error::Usage(
                "give 1 to 16 addresses such as udp://127.0.0.1:7900,tcp://127.0.0.1:7900".into(),
            ));
        }
        Ok(list)
    }
}

/// A byte stream as whole frames: what arrives comes out of `rx` (which
/// ends when the stream does), what is put in `tx` is written.
pub struct Framed {
    pub tx: mpsc::Sender<Vec<u8>>,
    pub rx: mpsc::Receiver<Vec<u8>>,
}

/// Frames `reader` and `writer` (two halves of one stream) with SLIP, until
/// either ends or `stop` is cancelled. Frames longer than a frame may be,
/// and broken escapes, are dropped and added to `dropped`.
pub fn framed<R, W>(
    mut reader: R,
    mut writer: W,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
) -> Framed
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let read_stop = stop.clone();
    tokio::spawn(async move {
        // One byte more than a frame may be, so that a longer one is seen.
        let mut deframer = Deframer::<{ FRAME_LEN_MAX + 1 }>::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::select! {
                _ = read_stop.cancelled() => break,
                r = reader.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
            };
            let mut frames = Vec::new();
            let before = deframer.dropped();
            deframer.feed(&buf[..n], |f| {
                if f.len() > FRAME_LEN_MAX {
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    frames.push(f.to_vec());
                }
            });
            dropped.fetch_add(u64::from(deframer.dropped() - before), Ordering::Relaxed);
            for f in frames {
                // Waiting here holds the sender back (TCP's flow control).
                if in_tx.send(f).await.is_err() {
                    return;
                }
            }
        }
        read_stop.cancel();
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; encoded_len_max(FRAME_LEN_MAX)];
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                f = out_rx.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
            };
            let Some(n) = encode(&frame, &mut buf) else {
                continue;
            };
            if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        stop.cancel();
    });
    Framed {
        tx: out_tx,
        rx: in_rx,
    }
}

/// Opens a stream transport (TCP or serial) as frames.
pub async fn connect(to: &Transport, stop: CancellationToken) -> Result<Framed> {
    let dropped = Arc::new(AtomicU64::new(0));
    match to {
        Transport::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| Error::Io {
                    context: format!("connecting to the gateway at {addr}"),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            Ok(framed(r, w, stop, dropped))
        }
        Transport::Serial { path, baud } => {
            let (r, w) = tokio::io::split(Serial::open(path, *baud)?);
            Ok(framed(r, w, stop, dropped))
        }
        Transport::Udp(_) => Err(Error::Internal("UDP is not a stream".into())),
    }
}

/// The termios speed of `baud`, if it is one.
fn baud_flag(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        921_600 => libc::B921600,
        _ => return None,
    })
}

/// A serial line (or a pseudo-terminal), raw, non-blocking, in the reactor.
pub struct Serial {
    fd: AsyncFd<std::fs::File>,
}

impl Serial {
    /// Opens `path` for reading and writing; a terminal is put in raw mode
    /// at `baud` (8 bits, no parity, one stop bit, no flow control).
    pub fn open(path: &std::path::Path, baud: u32) -> Result<Serial> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| Error::Io {
            context: format!("opening the serial line {}", path.display()),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        Serial::from_file(file, baud).map_err(io)
    }

    /// A line already open (a pseudo-terminal's other side, in tests):
    /// made non-blocking, and raw at `baud` if it is a terminal.
    pub fn from_file(file: std::fs::File, baud: u32) -> std::io::Result<Serial> {
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open for the life of `file`.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: `fd` is open for the life of `file`; termios is plain data
        // that tcgetattr fills before it is read.
        unsafe {
            if libc::isatty(fd) == 1 {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(fd, &mut t) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::cfmakeraw(&mut t);
                let speed = baud_flag(baud).unwrap_or(libc::B115200);
                libc::cfsetispeed(&mut t, speed);
                libc::cfsetospeed(&mut t, speed);
                t.c_cflag |= libc::CLOCAL | libc::CREAD;
                t.c_cflag &= !(libc::CRTSCTS | libc::CSTOPB | libc::PARENB);
                if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        // SAFETY: `file` owns its descriptor and the AsyncFd owns `file`
        // until it is dropped, so the descriptor stays open and the same.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(Serial { fd })
    }
}

fn raw(fd: &AsyncFd<std::fs::File>) -> RawFd {
    fd.get_ref().as_raw_fd()
}

impl AsyncRead for Serial {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard.try_io(|fd| {
                // SAFETY: reads at most `unfilled.len()` bytes into it.
                let n =
                    unsafe { libc::read(raw(fd), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pseudo-terminal whose other side closed says EIO: the end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Serial {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| {
                // SAFETY: writes at most `buf.len()` bytes from it.
                let n = unsafe { libc::write(raw(fd), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_clear_refusals() {
        assert_eq!(
            Transport::parse("127.0.0.1:7900").unwrap(),
            Transport::Udp("127.0.0.1:7900".parse().unwrap())
        );
        assert_eq!(
            Transport::parse("tcp://127.0.0.1:7901").unwrap(),
            Transport::Tcp("127.0.0.1:7901".parse().unwrap())
        );
        assert_eq!(
            Transport::parse("serial:///dev/ttyUSB0?baud=9600").unwrap(),
            Transport::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: 9600
            }
        );
        assert_eq!(
            Transport::parse("serial:///dev/ttyS1").unwrap().to_string(),
            "serial:///dev/ttyS1?baud=115200"
        );
        for (bad, says) in [
            ("quic://127.0.0.1:1", "not quic://"),
            ("serial://ttyUSB0", "device path"),
            ("serial:///dev/ttyS1?baud=12345", "baud must be"),
            ("serial:///dev/ttyS1?parity=odd", "only setting"),
            ("tcp://nowhere", "not an address"),
        ] {
            let e = Transport::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            Transport::parse_list("udp://127.0.0.1:1, tcp://127.0.0.1:2")
                .unwrap()
                .len(),
            2
        );
        assert!(Transport::parse_list(" , ").is_err());
    }
}
