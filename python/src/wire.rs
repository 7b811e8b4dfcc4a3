//! What a node and its Python worker say to each other, and how.
//!
//! One frame is a 4-byte little-endian length, then the message in CBOR.
//! The worker is the same build as the node (it is the node's own binary,
//! started again), so the messages need no version of their own; the
//! length is still checked on both sides, because a worker that a handler
//! broke may write anything.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Error, Result};

/// The largest frame either side accepts: the outputs of one invocation
/// ([`OUTPUT_BYTES_MAX`]) with room for their framing.
pub const FRAME_MAX: usize = OUTPUT_BYTES_MAX + (1 << 20);
/// The most bytes of outputs one invocation may append.
pub const OUTPUT_BYTES_MAX: usize = 16 << 20;
/// The most outputs one invocation may append.
pub const OUTPUTS_MAX: usize = 1024;
/// The most log lines one invocation keeps, and the bytes of each.
pub const LOG_LINES_MAX: usize = 64;
pub const LOG_LINE_BYTES_MAX: usize = 1024;
/// The most elements one `ctx.scan` returns.
pub const SCAN_MAX: u32 = 1000;

/// From the node to the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message: the handler to load.
    Load(Load),
    /// Run the handler on one element.
    Invoke {
        seq: u64,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The answer to the worker's last [`Ask`].
    Answer(Answer),
}

/// A handler to load, and what it sees as `ctx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub source: String,
    /// JSON text (empty means `{}`), seen as the dict `ctx.config`.
    pub config: String,
    pub topic: String,
    pub node: String,
    /// How much memory the handler may take on top of the loaded
    /// interpreter and its own module.
    pub memory_bytes: u64,
}

/// From the worker to the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The handler is loaded and waits for elements.
    Loaded,
    /// The handler cannot be loaded: a syntax error, no `handle`, an
    /// exception at import.
    Refused(Refusal),
    /// The handler reads a topic (`ctx.get`, `ctx.latest`, `ctx.scan`); the
    /// node answers with [`ToWorker::Answer`].
    Ask(Ask),
    /// One invocation is over.
    Done(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The line in the handler's source, when the error has one.
    pub line: Option<u32>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Get {
        topic: String,
        seq: u64,
    },
    Latest {
        topic: String,
    },
    Scan {
        topic: String,
        from: u64,
        limit: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// For `Get` and `Latest`: the element, if there is one.
    Element(Option<Element>),
    /// For `Scan`.
    Elements(Vec<Element>),
    /// The read failed; the handler sees a `RuntimeError` with this text.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Element {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What one invocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The appends it asked for through `ctx.append`, in order.
    pub outputs: Vec<Output>,
    /// What it logged (`ctx.log`, `print`), bounded.
    pub logs: Vec<String>,
    /// Why it failed, with the traceback; `None` if it returned normally.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub topic: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    let mut frame = vec![0; 4];
    let body = cbor4ii::serde::to_vec(Vec::new(), message)
        .map_err(|e| Error::Wire(format!("encoding: {e}")))?;
    if body.len() > FRAME_MAX {
        return Err(Error::Wire(format!(
            "a message of {} bytes; at most {FRAME_MAX}",
            body.len()
        )));
    }
    frame[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    cbor4ii::serde::from_slice(body).map_err(|e| Error::Wire(format!("decoding: {e}")))
}

fn length(header: [u8; 4]) -> Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > FRAME_MAX {
        return Err(Error::Wire(format!(
            "a frame of {len} bytes; at most {FRAME_MAX}"
        )));
    }
    Ok(len)
}

/// Writes one message (the worker's side: blocking I/O).
pub fn write<T: Serialize>(to: &mut impl Write, message: &T) -> Result<()> {
    let frame = encode(message)?;
    to.write_all(&frame)
        .and_then(|()| to.flush())
        .map_err(|e| Error::Wire(format!("writing: {e}")))
}

/// Reads one message, or `None` at the end of the stream (the worker's side).
pub fn read<T: for<'de> Deserialize<'de>>(from: &mut impl Read) -> Result<Option<T>> {
    let mut header = [0; 4];
    match from.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Wire(format!("reading: {e}"))),
    }
    let mut body = vec![0; length(header)?];
    from.read_exact(&mut body)
        .map_err(|e| Error::Wire(format!("reading: {e}")))?;
    decode(&body).map(Some)
}

/// Writes one message (the node's side).
pub async fn send<T: Serialize>(
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &T,
) -> Result<()> {
    let frame = encode(message)?;
    to.write_all(&frame)
        .await
        .map_err(|e| Error::Wire(format!("writing: {e}")))
}

/// Reads one message, or `None` at the end of the stream (the node's side).
pub async fn receive<T: for<'de> Deserialize<'de>>(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<T>> {
    let mut header = [0; 4];
    match from.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Wire(format!("reading: {e}"))),
    }
    let mut body = vec![0; length(header)?];
    from.read_exact(&mut body)
        .await
        .map_err(|e| Error::Wire(format!("reading: {e}")))?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_frames_are_refused() {
        let message = FromWorker::Done(Outcome {
            outputs: vec![Output {
                topic: "out".into(),
                payload: b"42".to_vec(),
            }],
            logs: vec!["hello".into()],
            error: None,
        });
        let mut buffer = Vec::new();
        write(&mut buffer, &message).unwrap();
        let back: FromWorker = read(&mut buffer.as_slice()).unwrap().unwrap();
        let FromWorker::Done(outcome) = back else {
            panic!("not Done: {back:?}");
        };
        assert_eq!(outcome.outputs[0].payload, b"42");
        assert_eq!(outcome.logs, vec!["hello".to_string()]);

        // The end of the stream is not an error...
        assert!(read::<FromWorker>(&mut [].as_slice()).unwrap().is_none());
        // ...but a frame that claims to be huge is.
        let huge = ((FRAME_MAX + 1) as u32).to_le_bytes();
        let e = read::<FromWorker>(&mut huge.as_slice()).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        // So is garbage where a message should be.
        let mut garbage = 3u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0x00, 0x13]);
        assert!(read::<FromWorker>(&mut garbage.as_slice()).is_err());
    }
}
