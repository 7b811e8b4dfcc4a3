//! A node's libp2p identity, kept in its data directory so that its peer id
//! survives restarts.

use std::path::Path;

use libp2p::identity::Keypair;

use crate::error::{Error, Result};

/// Loads the keypair in `path`, or creates and saves a new one.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    let bad = |reason: String| Error::Identity {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| bad(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            }
            // Written whole then renamed, so a crash never leaves half a key.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(|e| bad(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| bad(e.to_string()))?;
            Ok(keypair)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_identity_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load_or_create(&path), Err(Error::Identity { .. })));
    }
}
