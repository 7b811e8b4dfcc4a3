//! Every format woof writes to disk or sends to another node, in one place,
//! each with its version.
//!
//! Structured values (Raft entries and state, topic metadata, messages
//! between nodes, DHT records, snapshot headers) are CBOR behind one
//! version byte ([`encode`], [`decode`]): compact, self-describing enough to
//! add fields with defaults, and payloads stay raw bytes. The hot records
//! (elements, producer windows) have fixed layouts of their own here, also
//! led by a version byte. A reader meets a byte it does not know with
//! [`Error::Corrupt`] naming it, never a misread.
//!
//! | format | where | layout | version |
//! |---|---|---|---|
//! | element value | store `elements` | [`element`]: version, append time (u64 LE), payload | [`ELEMENT`] |
//! | element with a cause or a named handler | store `elements` | [`element`]: version, append time (u64 LE), meta length (u16 LE), [`meta`], payload | [`ELEMENT_META`] |
//! | effect index | store `effects` | key only: topic id, hash of (cause topic, handler), cause seq, seq (`store::rocks`) | the column family set |
//! | producer window | store `producers`, snapshots | [`window`]: version, then per append 3 × u64 LE | [`WINDOW`] |
//! | topic metadata | store `topics` | [`encode`] of `TopicMeta` | [`VALUE`] |
//! | Raft log entry, vote, purge point, applied state | store `raft_log`, `raft_values` | [`encode`] | [`VALUE`] |
//! | name directory record | elements of the directory topic | [`encode`] of `NameRecord` | [`VALUE`] |
//! | snapshot file | `snapshots/` beside the database | magic `WSNP`, its own version, [`encode`]d header, tagged records (`raft::snapshot`) | `raft::snapshot` |
//! | Raft message between nodes | overlay RPC | [`encode`] of `raft::network` envelopes | [`VALUE`] |
//! | node-to-node control, Raft batches | overlay RPC | a tag byte, then [`encode`] (`woof_node::groups`) | [`VALUE`] |
//! | topic DHT record `woof/topic/NAME` | Kademlia | [`encode`] of its location (`woof_node::api`) | [`VALUE`] |
//! | node values (lane epoch) | store `raft_values` of group 0 | u64 BE | the key's name |
//! | keys | every column family | big-endian ids and sequences (`store::rocks`) | the column family set |
//! | overlay protocols | libp2p | `/woof/1.0.0`, `/woof/kad/1.0.0`, `/woof/rpc/1.0.0` | the protocol name |
//! | client API | gRPC | `proto/woof/v1` | the package `woof.v1` |

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::topic::{CAUSE_BYTES_MAX, Cause, Element};

/// The version byte of every [`encode`]d value.
pub const VALUE: u8 = 1;
/// The version byte of an element's stored value.
pub const ELEMENT: u8 = 1;
/// The version byte of the stored value of an element with a [`meta`]: a
/// cause (a handler appended it) or a handler its append named.
pub const ELEMENT_META: u8 = 2;
/// The version byte of a stored producer window.
pub const WINDOW: u8 = 1;

/// A structured value for disk or wire: [`VALUE`], then CBOR.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    encode_after(Vec::new(), value)
}

/// [`encode`]'s bytes after `prefix` (a message's tag), in one buffer: no
/// copy to put the tag in front.
pub fn encode_after<T: serde::Serialize>(mut prefix: Vec<u8>, value: &T) -> Result<Vec<u8>> {
    prefix.push(VALUE);
    cbor4ii::serde::to_vec(prefix, value).map_err(|e| Error::Corrupt(format!("encode: {e}")))
}

/// What goes in front of `len` bytes so that, after `prefix`, the whole
/// reads as [`encode`] of a list holding those bytes alone (`[bytes]`, as
/// `serde_bytes`): a message sent as a list of one without copying it
/// into a new buffer. The length is written in CBOR's four-byte form,
/// which decoders read as any other.
pub fn list_of_one_bytes_head(mut prefix: Vec<u8>, len: usize) -> Result<Vec<u8>> {
    let len = u32::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("{len} bytes in one CBOR byte string")))?;
    prefix.extend_from_slice(&[VALUE, 0x81, 0x5a]);
    prefix.extend_from_slice(&len.to_be_bytes());
    Ok(prefix)
}

/// The value [`encode`] made of `bytes` (a value may borrow from them: a
/// `&serde_bytes::Bytes` is read without a copy).
pub fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&VALUE, rest)) => {
            cbor4ii::serde::from_slice(rest).map_err(|e| Error::Corrupt(format!("decode: {e}")))
        }
        Some((v, _)) => Err(Error::Corrupt(format!(
            "a value of format version {v}; this node reads version {VALUE} \
             (written by another version of woof?)"
        ))),
        None => Err(Error::Corrupt("an empty value".into())),
    }
}

/// An element's stored value: [`ELEMENT`], the append time as a
/// little-endian u64, then the payload; or, for an element with a cause
/// or a handler named at its append, [`ELEMENT_META`], the time, the
/// length of its [`meta`] as a little-endian u16, the meta, then the
/// payload. Its sequence number is in the key.
pub mod element {
    use super::*;

    const HEADER: usize = 9;

    pub fn encode(element: &Element) -> Vec<u8> {
        let meta = meta::encode(element);
        let extra = meta.as_ref().map_or(0, |m| 2 + m.len());
        let mut out = Vec::with_capacity(HEADER + extra + element.payload.len());
        out.push(if meta.is_some() {
            ELEMENT_META
        } else {
            ELEMENT
        });
        out.extend_from_slice(&element.append_time_ms.to_le_bytes());
        if let Some(meta) = meta {
            out.extend_from_slice(&(meta.len() as u16).to_le_bytes());
            out.extend_from_slice(&meta);
        }
        out.extend_from_slice(&element.payload);
        out
    }

    pub fn decode(seq: u64, value: &[u8]) -> Result<Element> {
        let version = value.first().copied();
        if value.len() < HEADER || !matches!(version, Some(ELEMENT | ELEMENT_META)) {
            return Err(Error::Corrupt(format!(
                "element {seq}: value of {} bytes with version {version:?}; this node reads \
                 {ELEMENT} and {ELEMENT_META}",
                value.len(),
            )));
        }
        let append_time_ms = u64::from_le_bytes(value[1..HEADER].try_into().expect("8 bytes"));
        let (meta, payload) = if version == Some(ELEMENT_META) {
            let rest = &value[HEADER..];
            let len = rest
                .get(..2)
                .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
                .ok_or_else(|| Error::Corrupt(format!("element {seq}: no meta length")))?;
            let bytes = rest.get(2..2 + len).ok_or_else(|| {
                Error::Corrupt(format!("element {seq}: a meta of {len} bytes cut short"))
            })?;
            (meta::decode(bytes)?, &rest[2 + len..])
        } else {
            (meta::Meta::default(), &value[HEADER..])
        };
        Ok(Element {
            seq,
            append_time_ms,
            payload: Bytes::copy_from_slice(payload),
            cause: meta.cause,
            handler: meta.handler,
        })
    }
}

/// What an element may carry beside its payload, as elements and snapshots
/// keep it: its [`Cause`] and the handler its append named, [`encode`]d
/// together, at most [`META_BYTES_MAX`] bytes.
pub mod meta {
    use super::*;

    /// The largest encoded meta.
    pub const META_BYTES_MAX: usize = CAUSE_BYTES_MAX + 128;

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    pub struct Meta {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cause: Option<Cause>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub handler: Option<String>,
    }

    /// `element`'s meta, or `None` if it has none (or, never for what the
    /// state machine checked, one too large to keep).
    pub fn encode(element: &Element) -> Option<Vec<u8>> {
        if element.cause.is_none() && element.handler.is_none() {
            return None;
        }
        let meta = Meta {
            cause: element.cause.clone(),
            handler: element.handler.clone(),
        };
        super::encode(&meta)
            .ok()
            .filter(|b| b.len() <= META_BYTES_MAX)
    }

    pub fn decode(bytes: &[u8]) -> Result<Meta> {
        if bytes.len() > META_BYTES_MAX {
            return Err(Error::Corrupt(format!(
                "an element's meta of {} bytes; at most {META_BYTES_MAX}",
                bytes.len()
            )));
        }
        super::decode(bytes)
    }

    /// The effect index's 8-byte name for the elements `handler` of
    /// `topic` made: FNV-1a of both (readers check the cause itself, so a
    /// collision costs a lookup, never a wrong answer).
    pub fn source_hash(topic: &str, handler: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in topic.bytes().chain([0]).chain(handler.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// A producer window's stored value: [`WINDOW`], then per remembered
/// append its producer sequence, first element and count, each a
/// little-endian u64, oldest first.
pub mod window {
    use super::*;
    use crate::topic::{PRODUCER_WINDOW, ProducerWindow};

    const ENTRY: usize = 24;

    pub fn encode(window: &ProducerWindow) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + window.len() * ENTRY);
        out.push(WINDOW);
        for (producer_seq, first_seq, count) in window.appends() {
            out.extend_from_slice(&producer_seq.to_le_bytes());
            out.extend_from_slice(&first_seq.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ProducerWindow> {
        let corrupt = || Error::Corrupt(format!("producer window of {} bytes", bytes.len()));
        let Some((&WINDOW, rest)) = bytes.split_first() else {
            return Err(corrupt());
        };
        if !rest.len().is_multiple_of(ENTRY) || rest.len() / ENTRY > PRODUCER_WINDOW {
            return Err(corrupt());
        }
        let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        ProducerWindow::from_appends((0..rest.len() / ENTRY).map(|i| {
            (
                u64_at(i * ENTRY),
                u64_at(i * ENTRY + 8),
                u64_at(i * ENTRY + 16),
            )
        }))
        .ok_or_else(corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{Producer, ProducerWindow};

    #[test]
    fn a_list_of_one_read_from_its_head_then_its_bytes() {
        for len in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 300_000] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut joined = list_of_one_bytes_head(vec![9], len).unwrap();
            joined.extend_from_slice(&body);
            let list: Vec<&serde_bytes::Bytes> = decode(&joined[1..]).unwrap();
            assert_eq!(list.len(), 1, "{len} bytes");
            assert!(list[0].as_ref() == body.as_slice(), "{len} bytes differ");
            // And it reads as what encode makes of the same list.
            let encoded = encode(&vec![serde_bytes::ByteBuf::from(body.clone())]).unwrap();
            let again: Vec<&serde_bytes::Bytes> = decode(&encoded).unwrap();
            assert_eq!(again, list);
        }
        // A length past the body is an error, not a panic.
        let mut short = list_of_one_bytes_head(Vec::new(), 10).unwrap();
        short.extend_from_slice(b"abc");
        assert!(decode::<Vec<&serde_bytes::Bytes>>(&short).is_err());
    }

    #[test]
    fn a_value_after_a_tag_reads_as_the_value_and_may_be_borrowed() {
        let payloads = vec![serde_bytes::ByteBuf::from(vec![1u8, 2, 3])];
        let bytes = encode_after(vec![9], &payloads).unwrap();
        assert_eq!(bytes[0], 9, "the tag first");
        assert_eq!(&bytes[1..], &encode(&payloads).unwrap()[..]);
        let read: Vec<&serde_bytes::Bytes> = decode(&bytes[1..]).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(&read[0][..], &[1, 2, 3]);
        // Borrowed: the bytes read are inside the buffer.
        let range = bytes.as_ptr_range();
        assert!(range.contains(&read[0].as_ptr()));
    }

    #[test]
    fn values_round_trip_and_other_versions_are_refused() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], VALUE);
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        let mut other = bytes.clone();
        other[0] = VALUE + 1;
        assert!(
            matches!(decode::<(u64, String)>(&other), Err(Error::Corrupt(m)) if m.contains("version"))
        );
        assert!(decode::<u64>(&[]).is_err());
        // CBOR written before the version byte existed (an array header).
        assert!(decode::<(u64, String)>(&bytes[1..]).is_err());
    }

    #[test]
    fn elements_round_trip_and_bad_values_are_refused() {
        let e = Element {
            seq: 9,
            payload: Bytes::from_static(b"hello"),
            append_time_ms: 1234,
            cause: None,
            handler: None,
        };
        let bytes = element::encode(&e);
        assert_eq!(bytes[0], ELEMENT);
        assert_eq!(element::decode(9, &bytes).unwrap(), e);
        assert!(element::decode(9, &bytes[..5]).is_err());
        let mut other = bytes;
        other[0] = ELEMENT_META + 1;
        assert!(element::decode(9, &other).is_err());

        let caused = Element {
            cause: Some(Cause {
                topic: "in".into(),
                seq: 7,
                handler: "double".into(),
                node: "12D3KooW".into(),
                time_ms: 99,
            }),
            ..e.clone()
        };
        let bytes = element::encode(&caused);
        assert_eq!(bytes[0], ELEMENT_META);
        assert_eq!(element::decode(9, &bytes).unwrap(), caused);
        let named = Element {
            handler: Some("h".into()),
            ..e.clone()
        };
        assert_eq!(element::decode(9, &element::encode(&named)).unwrap(), named);
        // A cause cut short, or claiming more bytes than there are.
        assert!(element::decode(9, &bytes[..10]).is_err());
        assert!(element::decode(9, &bytes[..14]).is_err());
        let mut long = bytes.clone();
        long[9..11].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(element::decode(9, &long).is_err());
    }

    #[test]
    fn windows_round_trip_and_bad_values_are_refused() {
        let mut w = ProducerWindow::default();
        w.record(3, 10, 2);
        w.record(5, 12, 1);
        let bytes = window::encode(&w);
        assert_eq!(bytes.len(), 1 + 2 * 24);
        let back = window::decode(&bytes).unwrap();
        assert_eq!(back, w);
        assert!(back.check(&Producer::new("p".into(), 5).unwrap()).is_ok());
        assert!(window::decode(&[WINDOW, 1, 2, 3]).is_err());
        assert!(window::decode(&bytes[1..]).is_err());
        assert!(window::decode(&[]).is_err());
        // Sequences out of order are not a window.
        let mut swapped = vec![WINDOW];
        swapped.extend_from_slice(&bytes[25..49]);
        swapped.extend_from_slice(&bytes[1..25]);
        assert!(window::decode(&swapped).is_err());
    }
}
