//! The cluster key: 32 secret bytes shared by a cluster's nodes. Only nodes
//! holding the same key can even start a handshake with each other (the
//! private network, [`crate::psk`]).
//!
//! Its file form, and its fingerprint, are the ones libp2p and IPFS use for
//! a private network's pre-shared key:
//! `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex digits>\n`.

use std::path::Path;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;

use crate::error::{Error, Result};

/// Key files are 80-odd bytes; anything much bigger is not one.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// A cluster's shared secret.
#[derive(Clone, Copy)]
pub struct ClusterKey {
    psk: PreSharedKey,
    secret: [u8; 32],
}

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        // An ed25519 secret is 32 bytes from the OS's random source.
        let secret = keypair
            .try_into_ed25519()
            .expect("just generated as ed25519")
            .secret();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(secret.as_ref());
        Self {
            psk: PreSharedKey::new(bytes),
            secret: bytes,
        }
    }

    /// Parses the file form.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let psk = PreSharedKey::from_str(text).map_err(|e| Error::ClusterKey(e.to_string()))?;
        // libp2p checked the form; its last line is the key in hex.
        let hex = text.lines().last().unwrap_or_default().trim().as_bytes();
        let mut secret = [0u8; 32];
        for (byte, pair) in secret.iter_mut().zip(hex.chunks(2)) {
            let digits = std::str::from_utf8(pair).ok();
            *byte = digits
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| Error::ClusterKey("the key is not 64 hex digits".into()))?;
        }
        if hex.len() != 64 {
            return Err(Error::ClusterKey("the key is not 64 hex digits".into()));
        }
        Ok(Self { psk, secret })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::ClusterKey(format!("{}: {reason}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > KEY_FILE_BYTES_MAX {
            return Err(bad(format!(
                "{} bytes is too large for a key file",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(|e| bad(e.to_string()))
    }

    /// The file form.
    pub fn to_file_text(&self) -> String {
        self.psk.to_key_file()
    }

    /// A short public fingerprint, safe to log.
    pub fn fingerprint(&self) -> String {
        self.psk.fingerprint().to_string()
    }

    /// The key the private network encrypts connections with.
    pub(crate) fn network_key(&self) -> [u8; 32] {
        crate::psk::derive(&self.secret)
    }

    /// The key itself, for the uses that derive their own keys from it
    /// (the links' own connections, [`crate::direct`]).
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_differs() {
        let a = ClusterKey::generate();
        let b = ClusterKey::generate();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let text = a.to_file_text();
        assert!(text.starts_with("/key/swarm/psk/1.0.0/"));
        let parsed = ClusterKey::parse(&text).unwrap();
        assert_eq!(parsed.fingerprint(), a.fingerprint());
        assert_eq!(parsed.secret, a.secret, "the same secret bytes");
        assert_eq!(parsed.network_key(), a.network_key());
        assert_ne!(a.network_key(), b.network_key());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "hello", "/key/swarm/psk/1.0.0/\n/base16/\nzz"] {
            assert!(
                matches!(ClusterKey::parse(bad), Err(Error::ClusterKey(_))),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 10_000]).unwrap();
        assert!(ClusterKey::load(&big).is_err());
        assert!(ClusterKey::load(&dir.path().join("missing")).is_err());
    }
}
