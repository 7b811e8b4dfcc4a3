//! The frame decoder on arbitrary bytes.
//!
//! Invariants: nothing panics; a frame that passes [`Frame::new_checked`]
//! has a consistent header, body and tag; a message that parses is emitted
//! again as exactly the same bytes (every message has one encoding) and
//! parses again as the same message; every body parser, run on the raw
//! bytes, round-trips the same way; what the node reads from a hello before
//! it knows the key agrees with the full parse; and opening the bytes as a
//! sealed frame either fails or gives a plaintext that seals back to them.

use woof_mcu_bridge::Error;
use woof_mcu_bridge::crypto::{Cipher, Context, Direction};
use woof_mcu_bridge::gateway;
use woof_mcu_bridge::wire::{
    FRAME_LEN_MAX, Frame, HEADER_LEN_MAX, HEADER_LEN_MIN, Message, SEQ_MAX, TAG_LEN, Type, VERSION,
    header_len,
};

/// The key and context the target opens the bytes under.
pub const KEY: [u8; 16] = *b"fuzz-frame-key!!";
pub const CTX: Context = Context {
    boot_id: 7,
    session_id: 3,
    direction: Direction::Up,
};

pub fn run(data: &[u8]) {
    if let Ok(frame) = Frame::new_checked(data) {
        check_frame(data, &frame);
    } else {
        assert!(Message::parse(&Frame::new_unchecked(data)).is_err());
    }
    for ty in 0..16 {
        if let Some(ty) = Type::from_u8(ty)
            && let Ok(msg) = Message::parse_body(ty, data)
        {
            check_body(ty, data, &msg);
        }
    }
    check_hello_id(data);
    check_open(data);
}

fn check_frame(data: &[u8], frame: &Frame<&[u8]>) {
    assert!(data.len() <= FRAME_LEN_MAX);
    assert_eq!(frame.version(), VERSION);
    let ty = frame.frame_type().expect("a checked frame has a type");
    let seq = frame.seq();
    assert!(seq <= SEQ_MAX);
    let hl = frame.header_len();
    assert!((HEADER_LEN_MIN..=HEADER_LEN_MAX).contains(&hl));
    assert_eq!(hl, header_len(seq));
    assert_eq!(frame.header(), &data[..hl]);
    assert_eq!(frame.tag(), &data[data.len() - TAG_LEN..]);
    assert_eq!(hl + frame.body().len() + TAG_LEN, data.len());
    match Message::parse(frame) {
        Ok(msg) => {
            assert_eq!(msg.frame_type(), ty);
            assert_eq!(msg.body_len(), frame.body().len());
            assert_eq!(msg.buffer_len(seq), data.len());
            let mut out = [0u8; FRAME_LEN_MAX];
            let n = msg
                .emit(seq, &mut out)
                .unwrap_or_else(|e| panic!("{msg:?} parsed but does not emit: {e:?}"));
            assert_eq!(n, data.len());
            // The tag is not the message's: emit leaves it zeroed.
            assert_eq!(&out[..n - TAG_LEN], &data[..n - TAG_LEN], "{msg:?}");
            let again = Message::parse(&Frame::new_checked(&out[..n]).expect("emitted frame"))
                .expect("an emitted frame parses");
            assert_eq!(again, msg);
            assert_eq!(Message::parse_body(ty, frame.body()), Ok(msg));
            assert_eq!(msg.emit(seq, &mut out[..n - 1]), Err(Error::BufferTooSmall));
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Truncated | Error::BadVarint | Error::BadField | Error::TrailingBytes
                ),
                "{e:?}"
            );
            assert!(Message::parse_body(ty, frame.body()).is_err());
        }
    }
}

/// A body parsed on its own: emitting it in a frame gives back the body.
fn check_body(ty: Type, body: &[u8], msg: &Message<'_>) {
    assert_eq!(msg.frame_type(), ty);
    assert_eq!(msg.body_len(), body.len());
    let seq = 130;
    let len = msg.buffer_len(seq);
    let mut out = [0u8; FRAME_LEN_MAX];
    match msg.emit(seq, &mut out) {
        Ok(n) => {
            assert_eq!(n, len);
            assert_eq!(&out[header_len(seq)..n - TAG_LEN], body);
        }
        Err(e) => {
            assert_eq!(e, Error::TooLong);
            assert!(len > FRAME_LEN_MAX);
        }
    }
}

/// What the node reads before it has a key agrees with the full parse.
fn check_hello_id(data: &[u8]) {
    let id = gateway::Session::hello_device_id(data);
    let full = Frame::new_checked(data)
        .ok()
        .and_then(|f| match (f.seq(), Message::parse(&f)) {
            (0, Ok(Message::Hello(h))) => Some(h.device_id),
            _ => None,
        });
    assert_eq!(id, full);
    if let Some(id) = id {
        assert!(!id.is_empty() && id.len() <= 32);
    }
}

/// Opening fails, or what it opened seals back to the same bytes.
fn check_open(data: &[u8]) {
    let cipher = Cipher::new(&KEY);
    let mut buf = data.to_vec();
    match cipher.open(&mut buf, &CTX) {
        Ok(()) => {
            cipher.seal(&mut buf, &CTX).expect("seal what opened");
            assert_eq!(buf, data);
        }
        Err(e) => {
            if Frame::new_checked(data).is_ok() {
                assert_eq!(e, Error::Forged);
            }
        }
    }
}
