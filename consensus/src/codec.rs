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
use crate::topic::Element;

/// The version byte of every [`encode`]d value.
pub const VALUE: u8 = 1;
/// The version byte of an element's stored value.
pub const ELEMENT: u8 = 1;
/// The version byte of a stored producer window.
pub const WINDOW: u8 = 1;

/// A structured value for disk or wire: [`VALUE`], then CBOR.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    cbor4ii::serde::to_vec(vec![VALUE], value).map_err(|e| Error::Corrupt(format!("encode: {e}")))
}

/// The value [`encode`] made of `bytes`.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
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
/// little-endian u64, then the payload. Its sequence number is in the key.
pub mod element {
    use super::*;

    const HEADER: usize = 9;

    pub fn encode(element: &Element) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + element.payload.len());
        out.push(ELEMENT);
        out.extend_from_slice(&element.append_time_ms.to_le_bytes());
        out.extend_from_slice(&element.payload);
        out
    }

    pub fn decode(seq: u64, value: &[u8]) -> Result<Element> {
        if value.len() < HEADER || value[0] != ELEMENT {
            return Err(Error::Corrupt(format!(
                "element {seq}: value of {} bytes with version {:?}; this node reads {ELEMENT}",
                value.len(),
                value.first()
            )));
        }
        Ok(Element {
            seq,
            append_time_ms: u64::from_le_bytes(value[1..HEADER].try_into().expect("8 bytes")),
            payload: Bytes::copy_from_slice(&value[HEADER..]),
        })
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
        };
        let bytes = element::encode(&e);
        assert_eq!(element::decode(9, &bytes).unwrap(), e);
        assert!(element::decode(9, &bytes[..5]).is_err());
        let mut other = bytes;
        other[0] = ELEMENT + 1;
        assert!(element::decode(9, &other).is_err());
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
