//! A node's settings: a TOML file (`--config node.toml`) and command-line
//! flags, flags winning.
//!
//! ```toml
//! data_dir = "/var/lib/woof"
//! grpc_listen = "127.0.0.1:7700"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The gRPC address a node listens on unless told otherwise.
pub const GRPC_LISTEN_DEFAULT: &str = "127.0.0.1:7700";
/// Config files are small; anything bigger is a mistake.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where the node keeps its database.
    pub data_dir: PathBuf,
    /// Where it serves gRPC.
    pub grpc_listen: SocketAddr,
}

/// The file form: every field optional, unknown fields refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: Option<SocketAddr>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(bad(format!(
                "{} bytes is too large for a config file",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(bad)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

impl NodeConfig {
    /// Merges flags over the file over the defaults.
    pub fn resolve(
        file: ConfigFile,
        data_dir: Option<PathBuf>,
        grpc_listen: Option<SocketAddr>,
    ) -> Result<Self> {
        let data_dir = data_dir.or(file.data_dir).ok_or_else(|| {
            Error::Usage(
                "a data directory is needed: --data-dir DIR or data_dir in --config".into(),
            )
        })?;
        let grpc_listen = grpc_listen
            .or(file.grpc_listen)
            .unwrap_or_else(|| GRPC_LISTEN_DEFAULT.parse().expect("valid default"));
        Ok(Self {
            data_dir,
            grpc_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let file = ConfigFile::parse("data_dir = \"/a\"\ngrpc_listen = \"127.0.0.1:1\"").unwrap();
        let c = NodeConfig::resolve(file, Some("/b".into()), None).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        assert_eq!(c.grpc_listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = ConfigFile::parse("data_dir = ").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = ConfigFile::parse("data_dirr = \"/a\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = ConfigFile::parse("grpc_listen = \"nowhere\"").unwrap_err();
        assert!(e.contains("grpc_listen") || e.contains("invalid"), "{e}");
        assert!(NodeConfig::resolve(ConfigFile::default(), None, None).is_err());
    }
}
