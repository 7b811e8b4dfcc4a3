//! A topic's snapshot: its bytes as openraft carries them
//! ([`SnapshotData`]), and their encoding ([`SnapshotWriter`],
//! [`SnapshotReader`]), read and written in bounded pieces, never whole.
//!
//! The data is a [`SnapshotFile`] of the node's store: a file in the store's
//! directory for RocksDB, a buffer for the in-memory stores of tests and the
//! simulator (which must stay on one thread and off real files; their whole
//! store is in memory anyway). One enum serves both, so openraft's type
//! configuration names one type. openraft sends it to a follower in
//! chunks (the v1 protocol, kept by `openraft-legacy`: ADR 28) of `Config::snapshot_max_chunk_size` bytes (see
//! [`super::group::Timing`]), which the follower writes into a new file.
//!
//! Encoding, version 1 (integers little-endian):
//!
//! ```text
//! "WSNP" version:u8=1
//! header_len:u32 header:CBOR(Header)          at most HEADER_BYTES_MAX
//! records, each one tag byte then:
//!   1 element:  seq:u64 append_time_ms:u64 len:u32 payload
//!   3 element with a meta (a cause, a named handler): seq:u64
//!               append_time_ms:u64 meta_len:u16 meta (codec::meta)
//!               len:u32 payload
//!   2 producer: id_len:u16 id window_len:u32 window (ProducerWindow encoding)
//!   0 end:      elements:u64 producers:u64 checksum:u64
//! ```
//!
//! Elements come in increasing seq order, the last one the header's
//! `last_seq`; the checksum (FNV-1a, 64 bits) covers every byte before it.
//! Nothing may follow the end. A reader checks all of it and every length
//! against its bound before it allocates: bad bytes are an
//! [`Error::Corrupt`], never a panic.
//!
//! Version 2 is the same without element records: a snapshot that *refers
//! to its node's store* for the elements up to `last_seq` (ADR 36). It is
//! what a replica keeps when it builds a snapshot, and never leaves the
//! node: one is sent or installed only as a version 1 copy
//! ([`SnapshotData::pending`] makes it when first read). Readers of either
//! version refuse the other.

use std::future::Future;
use std::io::{Read, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::store::{PartPath, SnapshotFile};
use crate::topic::handlers::Handlers;
use crate::topic::{ELEMENT_BYTES_MAX, Element, PRODUCER_ID_BYTES_MAX, ProducerWindow, TopicMeta};

const MAGIC: &[u8; 4] = b"WSNP";
const VERSION: u8 = 1;
/// A snapshot without its elements: they are in the store of the node
/// that built it.
const VERSION_REFERRING: u8 = 2;
/// The largest header a reader accepts (a topic's metadata and a
/// membership: a few KiB in practice).
const HEADER_BYTES_MAX: u32 = 1 << 20;
/// The largest encoded producer window a reader accepts.
const WINDOW_BYTES_MAX: u32 = 64 * 1024;
/// Producer windows a snapshot carries at most.
pub const PRODUCERS_MAX: u64 = 100_000;

const TAG_END: u8 = 0;
const TAG_ELEMENT: u8 = 1;
const TAG_PRODUCER: u8 = 2;
const TAG_META: u8 = 3;

/// How much of a snapshot is in memory at once, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// The payload bytes one store read (building) or one write batch
    /// (installing) holds at most; one element larger than this goes alone.
    pub batch_bytes_max: usize,
    /// Elements one store read or write batch holds at most.
    pub batch_elements_max: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SnapshotLimits {
    pub const DEFAULT: Self = Self {
        batch_bytes_max: 4 << 20,
        batch_elements_max: 1000,
    };
}

/// What a snapshot says about its topic before its records. `applied` is
/// the state machine's applied state (CBOR, decoded by its owner), so that
/// this codec knows nothing of openraft's types.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub applied: serde_bytes::ByteBuf,
    /// `None`: the topic was not created, or was deleted.
    pub meta: Option<TopicMeta>,
    /// The topic's highest seq (its last element's), 0 if none.
    pub last_seq: u64,
    /// The handlers bound to the topic, with their progress.
    #[serde(default)]
    pub handlers: Handlers,
}

/// One record of a snapshot after its header.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Element(Element),
    Producer(String, ProducerWindow),
}

/// FNV-1a over everything that passes through.
#[derive(Debug)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn write_failed(e: std::io::Error) -> Error {
    Error::Storage(format!("writing a snapshot: {e}"))
}

fn read_failed(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Corrupt("snapshot: truncated".into())
    } else {
        Error::Storage(format!("reading a snapshot: {e}"))
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("snapshot: {what}"))
}

/// Writes a snapshot record by record into `W` (give it a buffered writer).
pub struct SnapshotWriter<W: Write> {
    out: W,
    sum: Checksum,
    /// Version 2: no elements (see the module documentation).
    referring: bool,
    last_seq: u64,
    seq: u64,
    elements: u64,
    producers: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot with its header.
    pub fn new(out: W, header: &Header) -> Result<Self> {
        Self::start(out, header, false)
    }

    /// Starts a snapshot that refers to its node's store for its elements
    /// (version 2): it takes producers only.
    pub fn referring(out: W, header: &Header) -> Result<Self> {
        Self::start(out, header, true)
    }

    fn start(out: W, header: &Header, referring: bool) -> Result<Self> {
        let header_bytes = encode(header)?;
        if header_bytes.len() > HEADER_BYTES_MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "a snapshot header of {} bytes",
                header_bytes.len()
            )));
        }
        let mut w = Self {
            out,
            sum: Checksum::new(),
            referring,
            last_seq: header.last_seq,
            seq: 0,
            elements: 0,
            producers: 0,
        };
        w.put(MAGIC)?;
        w.put(&[if referring {
            VERSION_REFERRING
        } else {
            VERSION
        }])?;
        w.put(&(header_bytes.len() as u32).to_le_bytes())?;
        w.put(&header_bytes)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.sum.update(bytes);
        self.out.write_all(bytes).map_err(write_failed)
    }

    /// Adds an element; elements come in increasing seq order.
    pub fn element(&mut self, e: &Element) -> Result<()> {
        if self.referring {
            return Err(Error::InvalidArgument(
                "a snapshot that refers to its store holds no elements".into(),
            ));
        }
        if e.seq <= self.seq || e.seq > self.last_seq {
            return Err(Error::Corrupt(format!(
                "snapshot of a topic up to {}: element {} after {}",
                self.last_seq, e.seq, self.seq
            )));
        }
        let len = u32::try_from(e.payload.len())
            .map_err(|_| corrupt(format!("element {} too large", e.seq)))?;
        let meta = crate::codec::meta::encode(e);
        self.seq = e.seq;
        self.elements += 1;
        self.put(&[if meta.is_some() {
            TAG_META
        } else {
            TAG_ELEMENT
        }])?;
        self.put(&e.seq.to_le_bytes())?;
        self.put(&e.append_time_ms.to_le_bytes())?;
        if let Some(meta) = meta {
            self.put(&(meta.len() as u16).to_le_bytes())?;
            self.put(&meta)?;
        }
        self.put(&len.to_le_bytes())?;
        self.put(&e.payload)
    }

    pub fn producer(&mut self, id: &str, window: &ProducerWindow) -> Result<()> {
        if self.producers >= PRODUCERS_MAX {
            return Err(Error::LimitReached(format!(
                "a snapshot carries at most {PRODUCERS_MAX} producers"
            )));
        }
        let window = crate::codec::window::encode(window);
        self.producers += 1;
        self.put(&[TAG_PRODUCER])?;
        self.put(&(id.len() as u16).to_le_bytes())?;
        self.put(id.as_bytes())?;
        self.put(&(window.len() as u32).to_le_bytes())?;
        self.put(&window)
    }

    /// Ends the snapshot and gives back the writer (not flushed).
    pub fn finish(mut self) -> Result<W> {
        if !self.referring && self.seq != self.last_seq {
            return Err(Error::Corrupt(format!(
                "snapshot of a topic up to {} ends at element {}",
                self.last_seq, self.seq
            )));
        }
        self.put(&[TAG_END])?;
        self.put(&self.elements.to_le_bytes())?;
        self.put(&self.producers.to_le_bytes())?;
        let sum = self.sum.0;
        self.out
            .write_all(&sum.to_le_bytes())
            .map_err(write_failed)?;
        Ok(self.out)
    }
}

/// Reads a snapshot record by record from `R` (give it a buffered reader),
/// checking everything as it goes.
pub struct SnapshotReader<R: Read> {
    input: R,
    sum: Checksum,
    /// Version 2: no elements (see the module documentation).
    referring: bool,
    header: Header,
    /// The largest element payload the header's topic allows.
    payload_max: u32,
    seq: u64,
    elements: u64,
    producers: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and checks the header of a snapshot (version 1: one that can
    /// be sent and installed).
    pub fn new(input: R) -> Result<Self> {
        Self::open(input, false)
    }

    /// Reads and checks the header of a snapshot that refers to its node's
    /// store for its elements (version 2).
    pub fn referring(input: R) -> Result<Self> {
        Self::open(input, true)
    }

    fn open(input: R, referring: bool) -> Result<Self> {
        let mut r = Self {
            input,
            sum: Checksum::new(),
            referring,
            header: Header {
                applied: Default::default(),
                meta: None,
                last_seq: 0,
                handlers: Handlers::default(),
            },
            payload_max: 0,
            seq: 0,
            elements: 0,
            producers: 0,
            done: false,
        };
        let magic: [u8; 4] = r.take()?;
        if &magic != MAGIC {
            return Err(corrupt("not a woof snapshot"));
        }
        let [version] = r.take()?;
        let want = if referring {
            VERSION_REFERRING
        } else {
            VERSION
        };
        if version == VERSION_REFERRING && !referring {
            return Err(corrupt(
                "version 2, a snapshot that refers to its node's store: never sent nor installed",
            ));
        }
        if version != want {
            return Err(corrupt(format!(
                "version {version}; this node reads version {want} here"
            )));
        }
        let len = u32::from_le_bytes(r.take()?);
        if len > HEADER_BYTES_MAX {
            return Err(corrupt(format!("a header of {len} bytes")));
        }
        let bytes = r.take_vec(len)?;
        let header: Header = decode(&bytes)?;
        match &header.meta {
            Some(meta) => {
                r.payload_max = meta.config.element_max_bytes.min(ELEMENT_BYTES_MAX);
            }
            None if header.last_seq != 0 => {
                return Err(corrupt("elements of a topic that does not exist"));
            }
            None => {}
        }
        r.header = header;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0; N];
        self.input.read_exact(&mut buf).map_err(read_failed)?;
        self.sum.update(&buf);
        Ok(buf)
    }

    /// `len` bytes; the caller checked `len` against its bound.
    fn take_vec(&mut self, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0; len as usize];
        self.input.read_exact(&mut buf).map_err(read_failed)?;
        self.sum.update(&buf);
        Ok(buf)
    }

    /// The next record, or `None` after a correct end (which has then been
    /// checked: counts, checksum, nothing after it).
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let [tag] = self.take()?;
        match tag {
            TAG_ELEMENT | TAG_META if self.referring => Err(corrupt(
                "an element in a snapshot that refers to its store for them",
            )),
            TAG_ELEMENT | TAG_META => {
                let seq = u64::from_le_bytes(self.take()?);
                let append_time_ms = u64::from_le_bytes(self.take()?);
                let meta = if tag == TAG_META {
                    let meta_len = u16::from_le_bytes(self.take()?);
                    if usize::from(meta_len) > crate::codec::meta::META_BYTES_MAX {
                        return Err(corrupt(format!(
                            "element {seq} with a meta of {meta_len} bytes"
                        )));
                    }
                    let bytes = self.take_vec(u32::from(meta_len))?;
                    crate::codec::meta::decode(&bytes)?
                } else {
                    Default::default()
                };
                let len = u32::from_le_bytes(self.take()?);
                if seq <= self.seq || seq > self.header.last_seq {
                    return Err(corrupt(format!(
                        "element {seq} after {} in a topic up to {}",
                        self.seq, self.header.last_seq
                    )));
                }
                if len > self.payload_max {
                    return Err(corrupt(format!(
                        "element {seq} of {len} bytes; the topic allows {}",
                        self.payload_max
                    )));
                }
                let payload = Bytes::from(self.take_vec(len)?);
                self.seq = seq;
                self.elements += 1;
                Ok(Some(Record::Element(Element {
                    seq,
                    payload,
                    append_time_ms,
                    cause: meta.cause,
                    handler: meta.handler,
                })))
            }
            TAG_PRODUCER => {
                if self.producers >= PRODUCERS_MAX {
                    return Err(corrupt(format!("more than {PRODUCERS_MAX} producers")));
                }
                let id_len = u16::from_le_bytes(self.take()?);
                if id_len == 0 || id_len as usize > PRODUCER_ID_BYTES_MAX {
                    return Err(corrupt(format!("a producer id of {id_len} bytes")));
                }
                let id = String::from_utf8(self.take_vec(u32::from(id_len))?)
                    .map_err(|_| corrupt("a producer id that is not UTF-8"))?;
                let len = u32::from_le_bytes(self.take()?);
                if len > WINDOW_BYTES_MAX {
                    return Err(corrupt(format!("a producer window of {len} bytes")));
                }
                let window = crate::codec::window::decode(&self.take_vec(len)?)?;
                self.producers += 1;
                Ok(Some(Record::Producer(id, window)))
            }
            TAG_END => {
                let elements = u64::from_le_bytes(self.take()?);
                let producers = u64::from_le_bytes(self.take()?);
                let expected = self.sum.0;
                let mut sum = [0; 8];
                self.input.read_exact(&mut sum).map_err(read_failed)?;
                if u64::from_le_bytes(sum) != expected {
                    return Err(corrupt("checksum mismatch"));
                }
                if elements != self.elements || producers != self.producers {
                    return Err(corrupt(format!(
                        "the end counts {elements} elements and {producers} producers; \
                         read {} and {}",
                        self.elements, self.producers
                    )));
                }
                if !self.referring && self.seq != self.header.last_seq {
                    return Err(corrupt(format!(
                        "a topic up to {} whose elements end at {}",
                        self.header.last_seq, self.seq
                    )));
                }
                let mut more = [0; 1];
                match self.input.read(&mut more) {
                    Ok(0) => {}
                    Ok(_) => return Err(corrupt("bytes after the end")),
                    Err(e) => return Err(read_failed(e)),
                }
                self.done = true;
                Ok(None)
            }
            other => Err(corrupt(format!("unknown record tag {other}"))),
        }
    }
}

/// A snapshot's bytes as openraft holds them: what it reads chunks from
/// (leader) and writes received chunks into (follower).
#[derive(Debug)]
pub enum SnapshotData {
    Disk {
        file: tokio::fs::File,
        /// Set while the file is not kept yet (removed if dropped).
        part: Option<PartPath>,
    },
    Memory(std::io::Cursor<Vec<u8>>),
    /// A file still to be made (a copy of a snapshot that refers to its
    /// store): made when first read, written or sought, on a blocking
    /// thread, or in place where storage runs in place.
    Pending(Box<Pending>),
}

/// How a [`SnapshotData::Pending`] makes its file.
pub type MakeFile = Box<dyn FnOnce() -> Result<SnapshotFile> + Send + Sync>;

/// The state of a [`SnapshotData::Pending`].
pub struct Pending {
    make: Option<MakeFile>,
    making: Option<tokio::task::JoinHandle<Result<SnapshotFile>>>,
    /// A seek asked for before the file was made.
    seek: Option<SeekFrom>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("started", &self.making.is_some())
            .finish()
    }
}

fn io_failed(e: Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl SnapshotData {
    /// A file that `make` makes when the data is first used: openraft
    /// asks for the current snapshot at times when it only wants its
    /// metadata, and a copy nobody reads is never made.
    pub fn pending(make: MakeFile) -> Self {
        Self::Pending(Box::new(Pending {
            make: Some(make),
            making: None,
            seek: None,
        }))
    }

    /// Makes a pending file, if this is one; then it is a file.
    fn poll_made(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Self::Pending(pending) = self else {
            return Poll::Ready(Ok(()));
        };
        let file = if let Some(make) = pending.make.take() {
            if crate::store::storage_inline() {
                Some(make().map_err(io_failed)?)
            } else {
                pending.making = Some(tokio::task::spawn_blocking(make));
                None
            }
        } else {
            None
        };
        let file = match file {
            Some(file) => file,
            None => {
                let Some(making) = pending.making.as_mut() else {
                    return Poll::Ready(Err(std::io::Error::other("a snapshot copy failed")));
                };
                match std::task::ready!(Pin::new(making).poll(cx)) {
                    Ok(made) => made.map_err(io_failed)?,
                    Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
                }
            }
        };
        let seek = pending.seek.take();
        *self = Self::from_file(file);
        if let Some(position) = seek {
            Pin::new(self).start_seek(position)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Positioned at the start of `file`.
    pub fn from_file(file: SnapshotFile) -> Self {
        match file {
            SnapshotFile::Disk { file, part } => Self::Disk {
                file: tokio::fs::File::from_std(file),
                part,
            },
            SnapshotFile::Memory(c) => Self::Memory(c),
        }
    }

    /// The file, once every write to it has finished (a pending one made).
    pub async fn into_file(mut self) -> Result<SnapshotFile> {
        std::future::poll_fn(|cx| self.poll_made(cx))
            .await
            .map_err(|e| Error::Storage(format!("making a snapshot's copy: {e}")))?;
        Ok(match self {
            Self::Disk { file, part } => SnapshotFile::Disk {
                file: file.into_std().await,
                part,
            },
            Self::Memory(c) => SnapshotFile::Memory(c),
            Self::Pending(_) => unreachable!("made above"),
        })
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_made(cx))?;
        match this {
            Self::Disk { file, .. } => Pin::new(file).poll_read(cx, buf),
            Self::Memory(c) => Pin::new(c).poll_read(cx, buf),
            Self::Pending(_) => unreachable!("made above"),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_made(cx))?;
        match this {
            Self::Disk { file, .. } => Pin::new(file).poll_write(cx, buf),
            Self::Memory(c) => Pin::new(c).poll_write(cx, buf),
            Self::Pending(_) => unreachable!("made above"),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Disk { file, .. } => Pin::new(file).poll_flush(cx),
            Self::Memory(c) => Pin::new(c).poll_flush(cx),
            Self::Pending(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Disk { file, .. } => Pin::new(file).poll_shutdown(cx),
            Self::Memory(c) => Pin::new(c).poll_shutdown(cx),
            Self::Pending(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            Self::Disk { file, .. } => Pin::new(file).start_seek(position),
            Self::Memory(c) => Pin::new(c).start_seek(position),
            Self::Pending(pending) => {
                pending.seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_made(cx))?;
        match this {
            Self::Disk { file, .. } => Pin::new(file).poll_complete(cx),
            Self::Memory(c) => Pin::new(c).poll_complete(cx),
            Self::Pending(_) => unreachable!("made above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{TopicConfig, TopicId, TopicName};

    fn meta() -> TopicMeta {
        TopicMeta {
            id: TopicId(7),
            name: TopicName::new("a/b").unwrap(),
            config: TopicConfig::default(),
            created_at_ms: 1,
            placement: Default::default(),
        }
    }

    fn sample() -> Vec<u8> {
        let header = Header {
            applied: serde_bytes::ByteBuf::from(vec![1, 2, 3]),
            meta: Some(meta()),
            last_seq: 5,
            handlers: Handlers::default(),
        };
        let mut w = SnapshotWriter::new(Vec::new(), &header).unwrap();
        for seq in 3..=5 {
            // Element 4 was made by a handler: its cause travels with it.
            w.element(&Element {
                seq,
                payload: Bytes::from(vec![seq as u8; 10]),
                append_time_ms: seq * 100,
                cause: (seq == 4).then(cause),
                handler: (seq == 5).then(|| "h".to_string()),
            })
            .unwrap();
        }
        let mut window = ProducerWindow::default();
        window.record(1, 3, 1);
        w.producer("p", &window).unwrap();
        w.finish().unwrap()
    }

    fn cause() -> crate::topic::Cause {
        crate::topic::Cause {
            topic: "in".into(),
            seq: 12,
            handler: "h".into(),
            node: "n".into(),
            time_ms: 3,
        }
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Record>)> {
        let mut r = SnapshotReader::new(bytes)?;
        let mut records = Vec::new();
        while let Some(record) = r.next_record()? {
            records.push(record);
        }
        Ok((r.header().clone(), records))
    }

    #[test]
    fn a_snapshot_that_refers_to_its_store_holds_producers_only_and_is_never_installed() {
        let header = Header {
            applied: serde_bytes::ByteBuf::from(vec![1]),
            meta: Some(meta()),
            last_seq: 5,
            handlers: Handlers::default(),
        };
        let mut w = SnapshotWriter::referring(Vec::new(), &header).unwrap();
        let element = Element {
            seq: 5,
            payload: Bytes::from_static(b"x"),
            append_time_ms: 1,
            cause: None,
            handler: None,
        };
        assert!(w.element(&element).is_err(), "it takes no element");
        let mut window = ProducerWindow::default();
        window.record(1, 3, 1);
        w.producer("p", &window).unwrap();
        let bytes = w.finish().unwrap();

        let mut r = SnapshotReader::referring(&bytes[..]).unwrap();
        assert_eq!(r.header(), &header);
        assert!(
            matches!(r.next_record().unwrap(), Some(Record::Producer(id, w)) if id == "p" && w == window)
        );
        assert!(r.next_record().unwrap().is_none());

        // What is sent and installed is read as version 1 only, and the
        // other way round.
        let refused = read_all(&bytes).unwrap_err().to_string();
        assert!(refused.contains("refers to its node's store"), "{refused}");
        assert!(SnapshotReader::referring(&sample()[..]).is_err());
        // An element slipped into one is corrupt.
        let mut forged = SnapshotWriter::new(Vec::new(), &header).unwrap();
        forged.element(&element).unwrap();
        let mut forged = forged.finish().unwrap();
        forged[4] = VERSION_REFERRING;
        let mut r = SnapshotReader::referring(&forged[..]).unwrap();
        assert!(r.next_record().is_err());
    }

    #[test]
    fn round_trip() {
        let (header, records) = read_all(&sample()).unwrap();
        assert_eq!(header.last_seq, 5);
        assert_eq!(header.meta, Some(meta()));
        assert_eq!(records.len(), 4);
        assert!(
            matches!(&records[0], Record::Element(e) if e.seq == 3 && e.append_time_ms == 300 && e.cause.is_none())
        );
        assert!(
            matches!(&records[1], Record::Element(e) if e.seq == 4 && e.cause == Some(cause()))
        );
        assert!(
            matches!(&records[2], Record::Element(e) if e.seq == 5 && e.handler.as_deref() == Some("h"))
        );
        assert!(matches!(&records[3], Record::Producer(id, _) if id == "p"));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(read_all(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(read_all(&bad).is_err(), "byte {i} flipped by {bit:#x}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = sample();
        bytes[4] = 2;
        let err = read_all(&bytes).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A header claiming 4 GiB.
        let mut bytes = b"WSNP\x01".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_all(&bytes), Err(Error::Corrupt(_))));
        // Random bytes after a correct header: an error, whatever they are.
        let good = sample();
        let mut seed = 1u64;
        for _ in 0..2000 {
            let mut bad = good[..40.min(good.len())].to_vec();
            for _ in 0..(seed % 64) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bad.push((seed >> 56) as u8);
            }
            let _ = read_all(&bad);
        }
    }

    #[test]
    fn the_writer_refuses_out_of_order_elements() {
        let header = Header {
            applied: Default::default(),
            meta: Some(meta()),
            last_seq: 2,
            handlers: Handlers::default(),
        };
        let mut w = SnapshotWriter::new(Vec::new(), &header).unwrap();
        let e = |seq| Element {
            seq,
            payload: Bytes::new(),
            append_time_ms: 0,
            cause: None,
            handler: None,
        };
        w.element(&e(2)).unwrap();
        assert!(w.element(&e(2)).is_err());
        assert!(w.element(&e(3)).is_err());
    }
}
