//! The cluster key: a libp2p pre-shared key (private network). Only nodes
//! holding the same key can even start a handshake with each other.
//!
//! Its file form is the one libp2p and IPFS use:
//! `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex digits>\n`.

use std::path::Path;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;

use crate::error::{Error, Result};

/// Key files are 80-odd bytes; anything much bigger is not one.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// A cluster's shared secret.
#[derive(Clone, Copy)]
pub struct ClusterKey(PreSharedKey);

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
        Self(PreSharedKey::new(bytes))
    }

    /// Parses the file form.
    pub fn parse(text: &str) -> Result<Self> {
        PreSharedKey::from_str(text.trim())
            .map(Self)
            .map_err(|e| Error::ClusterKey(e.to_string()))
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
        self.0.to_key_file()
    }

    /// A short public fingerprint, safe to log.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    pub(crate) fn psk(&self) -> PreSharedKey {
        self.0
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
        assert_eq!(
            ClusterKey::parse(&text).unwrap().fingerprint(),
            a.fingerprint()
        );
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
