//! A node's settings: a TOML file (`--config node.toml`) and command-line
//! flags, flags winning.
//!
//! ```toml
//! data_dir = "/var/lib/woof"
//! grpc_listen = "127.0.0.1:7700"
//! # Joining a cluster (all optional; without `listen` the node is standalone):
//! listen = ["/ip4/0.0.0.0/tcp/7800"]
//! link_port = "7810"           # where other nodes open Raft links (default: any free port; "off")
//! join = ["/ip4/10.0.0.5/tcp/7800"]
//! join_timeout = "30s"          # give up joining after this (default: never)
//! balance_leaders = false       # hand no leadership over to even them out (default: true)
//! cluster_key_file = "/etc/woof/cluster.key"
//! tier = "edge"
//! attrs = ["site=north"]
//! capabilities = ["python"]
//! # A bridge gateway for microcontrollers (cluster nodes only):
//! bridge_listen = "udp://0.0.0.0:7900,tcp://0.0.0.0:7900"
//! log_format = "json"           # or "text" (the default)
//! # Prometheus metrics (GET /metrics):
//! metrics_listen = "127.0.0.1:9100"
//! # The web dashboard (same tokens as the client API):
//! http_listen = "127.0.0.1:7780"
//! # TLS on the client API, and the CA this node trusts when it calls
//! # another node (default: the chain in tls_cert):
//! tls_cert = "/etc/woof/node-1.pem"
//! tls_key = "/etc/woof/node-1.key"
//! ca = "/etc/woof/ca.pem"
//! # Capability tokens: every request needs one signed by this root key.
//! require_token = true
//! token_root = "/etc/woof/root.key.pub"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use woof_overlay::{ClusterKey, LinkPort, Multiaddr, NodeInfo, Tier, Timing};

use crate::error::{Error, Result};

/// The gRPC address a node listens on unless told otherwise.
pub const GRPC_LISTEN_DEFAULT: &str = "127.0.0.1:7700";
/// Config files are small; anything bigger is a mistake.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;
/// The most `listen` or `join` addresses.
const ADDRS_MAX: usize = 16;
/// The environment variable that may hold the cluster key itself.
pub const CLUSTER_KEY_ENV: &str = "WOOF_CLUSTER_KEY";

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the node keeps its database and identity.
    pub data_dir: PathBuf,
    /// Where it serves gRPC.
    pub grpc_listen: SocketAddr,
    /// What it advertises to the cluster.
    pub info: NodeInfo,
    /// How it joins a cluster; `None` runs it standalone.
    pub cluster: Option<ClusterConfig>,
    /// The program that runs Python handlers: `None` is this binary
    /// (`woof __python-worker`). Tests that run a node inside their own
    /// process point it at the `woof` binary.
    pub python_worker: Option<PathBuf>,
    /// Where it serves devices the bridge protocol (UDP, TCP, serial
    /// lines), if anywhere.
    pub bridge_listen: Vec<crate::devices::transport::Transport>,
    /// Where it serves Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where it serves the web dashboard, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// TLS and tokens on the client API.
    pub security: Security,
}

/// TLS and capability tokens on a node's client API.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The node's certificate and key (`--tls-cert`, `--tls-key`), checked.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// The same certificate and key for the dashboard (HTTPS).
    pub https: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// What this node trusts when it calls another node's API: `--ca`, else
    /// the chain in its own `--tls-cert`.
    pub client_tls: Option<crate::auth::tls::ClientTls>,
    /// With `--require-token`: the root public key tokens must be signed by.
    pub token_root: Option<biscuit_auth::PublicKey>,
}

/// Overlay settings of a node that is part of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    pub key: ClusterKey,
    pub timing: Timing,
    /// How long to keep dialling `join` before giving up; `None` keeps on
    /// until a node answers (nodes started together come up in any order).
    pub join_timeout: Option<Duration>,
    /// A topic's replica on a node silent this long is replaced.
    pub repair_after: Duration,
    /// Where other nodes open links to this one (ADR 34).
    pub link_port: LinkPort,
    /// Whether this node hands leaderships over to nodes leading fewer of
    /// the groups both hold (ADR 42); on unless `balance_leaders = false`
    /// or `--no-leader-balance`.
    pub balance_leaders: bool,
}

/// The file form: every field optional, unknown fields refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: Option<SocketAddr>,
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub join: Vec<String>,
    pub cluster_key_file: Option<PathBuf>,
    pub tier: Option<String>,
    #[serde(default)]
    pub attrs: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub repair_after_secs: Option<u64>,
    pub bridge_listen: Option<String>,
    /// `any` (the default), a port number, or `off`.
    pub link_port: Option<String>,
    /// `false`: this node hands no leadership over to even them out.
    pub balance_leaders: Option<bool>,
    /// Such as `"30s"`; see [`parse_duration`].
    pub join_timeout: Option<String>,
    /// `text` or `json`; read by `main` before the rest, to set up logging.
    pub log_format: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub require_token: bool,
    pub token_root: Option<PathBuf>,
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

/// Settings given as flags; each overrides the file's.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: Option<SocketAddr>,
    pub listen: Vec<String>,
    pub join: Vec<String>,
    pub cluster_key_file: Option<PathBuf>,
    /// The key itself (from `WOOF_CLUSTER_KEY`), instead of a file.
    pub cluster_key: Option<String>,
    pub tier: Option<String>,
    pub attrs: Vec<String>,
    pub capabilities: Vec<String>,
    pub repair_after_secs: Option<u64>,
    /// `udp://HOST:PORT`.
    pub bridge_listen: Option<String>,
    /// `any`, a port number, or `off`.
    pub link_port: Option<String>,
    /// `--no-leader-balance`.
    pub no_leader_balance: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// Such as `30s`; see [`parse_duration`].
    pub join_timeout: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub require_token: bool,
    pub token_root: Option<PathBuf>,
}

/// The longest `--join-timeout` (a day): longer is a typo for "never",
/// which is what leaving it out means.
const JOIN_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);

/// Parses a duration as people write them: a whole number and a unit, `ms`,
/// `s`, `m` or `h` (`500ms`, `10s`, `2m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let bad = || format!("{text:?} is not a duration such as 500ms, 10s, 2m or 1h");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text each, for people.
    #[default]
    Text,
    /// One JSON object each, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(Error::Usage(format!(
                "log format {other:?}: it is text or json"
            ))),
        }
    }
}

/// The default time before a silent node's replicas are replaced.
pub const REPAIR_AFTER_DEFAULT: Duration = Duration::from_secs(30);
/// The longest repair delay a node accepts (a day).
const REPAIR_AFTER_MAX_SECS: u64 = 86_400;

fn addrs(list: &[String], what: &str) -> Result<Vec<Multiaddr>> {
    if list.len() > ADDRS_MAX {
        return Err(Error::Usage(format!(
            "at most {ADDRS_MAX} {what} addresses"
        )));
    }
    list.iter()
        .map(|a| {
            a.parse::<Multiaddr>().map_err(|e| {
                Error::Usage(format!(
                    "{what} address {a:?} is not a multiaddr such as /ip4/127.0.0.1/tcp/7800 ({e})"
                ))
            })
        })
        .collect()
}

impl NodeConfig {
    /// Merges flags over the file over the defaults.
    pub fn resolve(file: ConfigFile, flags: Flags) -> Result<Self> {
        let data_dir = flags.data_dir.or(file.data_dir).ok_or_else(|| {
            Error::Usage(
                "a data directory is needed: --data-dir DIR or data_dir in --config".into(),
            )
        })?;
        let grpc_listen = flags
            .grpc_listen
            .or(file.grpc_listen)
            .unwrap_or_else(|| GRPC_LISTEN_DEFAULT.parse().expect("valid default"));
        let tier: Tier = flags
            .tier
            .or(file.tier)
            .as_deref()
            .unwrap_or("edge")
            .parse()?;
        let mut info = NodeInfo::new(tier);
        let attrs = if flags.attrs.is_empty() {
            file.attrs
        } else {
            flags.attrs
        };
        for pair in &attrs {
            info = info.with_attr(pair)?;
        }
        let capabilities = if flags.capabilities.is_empty() {
            file.capabilities
        } else {
            flags.capabilities
        };
        info.capabilities = capabilities.into_iter().collect();
        info.validate()?;

        let listen = addrs(
            if flags.listen.is_empty() {
                &file.listen
            } else {
                &flags.listen
            },
            "listen",
        )?;
        let join = addrs(
            if flags.join.is_empty() {
                &file.join
            } else {
                &flags.join
            },
            "join",
        )?;
        let key_file = flags.cluster_key_file.or(file.cluster_key_file);
        let join_timeout = match flags.join_timeout.or(file.join_timeout) {
            None => None,
            Some(text) => match parse_duration(&text) {
                Ok(d) if !d.is_zero() && d <= JOIN_TIMEOUT_MAX => Some(d),
                Ok(_) => {
                    return Err(Error::Usage(format!(
                        "the join timeout must be more than 0 and at most {} h, not {text:?} \
                         (leave it out to wait as long as it takes)",
                        JOIN_TIMEOUT_MAX.as_secs() / 3600
                    )));
                }
                Err(e) => return Err(Error::Usage(format!("join timeout: {e}"))),
            },
        };
        let link_port = match flags.link_port.or(file.link_port) {
            None => LinkPort::Any,
            Some(text) => text
                .parse()
                .map_err(|e: woof_overlay::Error| Error::Usage(e.to_string()))?,
        };
        let repair_after = match flags.repair_after_secs.or(file.repair_after_secs) {
            None => REPAIR_AFTER_DEFAULT,
            Some(s) if (1..=REPAIR_AFTER_MAX_SECS).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                return Err(Error::Usage(format!(
                    "the repair delay must be 1 to {REPAIR_AFTER_MAX_SECS} seconds, not {s}"
                )));
            }
        };
        let bridge_listen = flags
            .bridge_listen
            .or(file.bridge_listen)
            .map(|a| crate::devices::transport::Transport::parse_list(&a))
            .transpose()?
            .unwrap_or_default();
        if !bridge_listen.is_empty() && listen.is_empty() {
            return Err(Error::Usage(
                "--bridge-listen needs a cluster node (--listen): devices' readings are \
                 replicated topics"
                    .into(),
            ));
        }
        let cluster = if listen.is_empty() {
            if !join.is_empty() || key_file.is_some() || join_timeout.is_some() {
                return Err(Error::Usage(
                    "--join, --join-timeout and --cluster-key need --listen (the node's own \
                     overlay address)"
                        .into(),
                ));
            }
            None
        } else {
            let key = match (key_file, flags.cluster_key) {
                (Some(path), _) => ClusterKey::load(&path)?,
                (None, Some(text)) => ClusterKey::parse(&text)?,
                (None, None) => {
                    return Err(Error::Usage(format!(
                        "a node in a cluster needs the cluster key: --cluster-key FILE or {CLUSTER_KEY_ENV} (make one with `woof cluster keygen`)"
                    )));
                }
            };
            Some(ClusterConfig {
                listen,
                join,
                key,
                timing: Timing::default(),
                join_timeout,
                repair_after,
                link_port,
                balance_leaders: !flags.no_leader_balance && file.balance_leaders.unwrap_or(true),
            })
        };
        let security = Security::resolve(
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
            flags.ca.or(file.ca),
            flags.require_token || file.require_token,
            flags.token_root.or(file.token_root),
        )?;
        Ok(Self {
            data_dir,
            grpc_listen,
            info,
            cluster,
            python_worker: None,
            bridge_listen,
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            http_listen: flags.http_listen.or(file.http_listen),
            security,
        })
    }

    /// A standalone node in `data_dir` with default settings.
    pub fn standalone(data_dir: PathBuf, grpc_listen: SocketAddr) -> Self {
        Self {
            data_dir,
            grpc_listen,
            info: NodeInfo::new(Tier::Edge),
            cluster: None,
            python_worker: None,
            bridge_listen: Vec::new(),
            metrics_listen: None,
            http_listen: None,
            security: Security::default(),
        }
    }
}

impl Security {
    /// Reads and checks the files the settings name.
    pub fn resolve(
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        ca: Option<PathBuf>,
        require_token: bool,
        token_root: Option<PathBuf>,
    ) -> Result<Self> {
        use crate::auth::tls::{ClientTls, server_config};
        let (tls, https) = match (&tls_cert, &tls_key) {
            (Some(cert), Some(key)) => {
                let (grpc, https) = server_config(cert, key)?;
                (Some(grpc), Some(https))
            }
            (None, None) => (None, None),
            _ => {
                return Err(Error::Usage("--tls-cert and --tls-key go together".into()));
            }
        };
        let client_tls = match (&ca, &tls_cert) {
            (Some(ca), _) => Some(ClientTls::load(ca)?),
            (None, Some(chain)) => Some(ClientTls::load(chain)?),
            (None, None) => None,
        };
        let token_root = match (require_token, token_root) {
            (true, Some(path)) => Some(crate::auth::token::load_public(&path)?),
            (true, None) => {
                return Err(Error::Usage(
                    "--require-token needs --token-root FILE (the public root key, \
                     root.key.pub from `woof token keygen`)"
                        .into(),
                ));
            }
            (false, Some(_)) => {
                return Err(Error::Usage(
                    "--token-root is used with --require-token".into(),
                ));
            }
            (false, None) => None,
        };
        Ok(Self {
            tls,
            https,
            client_tls,
            token_root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(data_dir: &str) -> Flags {
        Flags {
            data_dir: Some(data_dir.into()),
            ..Flags::default()
        }
    }

    #[test]
    fn flags_win_over_file() {
        let file =
            ConfigFile::parse("data_dir = \"/a\"\ngrpc_listen = \"127.0.0.1:1\"\ntier = \"cloud\"")
                .unwrap();
        let c = NodeConfig::resolve(file, flags("/b")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        assert_eq!(c.grpc_listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.info.tier, Tier::Cloud);
        assert!(c.cluster.is_none());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = ConfigFile::parse("data_dir = ").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = ConfigFile::parse("data_dirr = \"/a\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = ConfigFile::parse("grpc_listen = \"nowhere\"").unwrap_err();
        assert!(e.contains("grpc_listen") || e.contains("invalid"), "{e}");
        assert!(NodeConfig::resolve(ConfigFile::default(), Flags::default()).is_err());
    }

    #[test]
    fn cluster_settings_are_checked() {
        let mut f = flags("/d");
        f.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        let e = NodeConfig::resolve(ConfigFile::default(), f.clone()).unwrap_err();
        assert!(e.to_string().contains("cluster key"), "{e}");
        f.cluster_key = Some(ClusterKey::generate().to_file_text());
        let c = NodeConfig::resolve(ConfigFile::default(), f.clone()).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.listen.len(), 1);
        assert_eq!(cluster.repair_after, REPAIR_AFTER_DEFAULT);
        assert_eq!(cluster.link_port, LinkPort::Any);
        assert!(cluster.balance_leaders, "the balance is on by default");
        // The balance: off from the file or the flag; the flag cannot turn
        // on what the file turned off (it only says "no").
        let balance = |file: &str, no_flag: bool| {
            let mut f = f.clone();
            f.no_leader_balance = no_flag;
            let file = ConfigFile::parse(file).unwrap();
            NodeConfig::resolve(file, f)
                .unwrap()
                .cluster
                .unwrap()
                .balance_leaders
        };
        assert!(!balance("balance_leaders = false", false));
        assert!(!balance("", true));
        assert!(!balance("balance_leaders = true", true));
        assert!(balance("balance_leaders = true", false));
        assert!(ConfigFile::parse("balance_leaders = \"no\"").is_err());
        // The link port: from the file, the flag winning; a clear error else.
        let file = ConfigFile::parse("link_port = \"off\"").unwrap();
        let c = NodeConfig::resolve(file, f.clone()).unwrap();
        assert_eq!(c.cluster.unwrap().link_port, LinkPort::Off);
        let mut port = f.clone();
        port.link_port = Some("7810".into());
        let file = ConfigFile::parse("link_port = \"off\"").unwrap();
        let c = NodeConfig::resolve(file, port.clone()).unwrap();
        assert_eq!(c.cluster.unwrap().link_port, LinkPort::Fixed(7810));
        for bad in ["70000", "on", ""] {
            port.link_port = Some(bad.into());
            let e = NodeConfig::resolve(ConfigFile::default(), port.clone()).unwrap_err();
            assert!(e.to_string().contains("link port"), "{bad:?}: {e}");
        }
        let file = ConfigFile::parse("repair_after_secs = 5").unwrap();
        let c = NodeConfig::resolve(file, f.clone()).unwrap();
        assert_eq!(c.cluster.unwrap().repair_after, Duration::from_secs(5));
        for secs in [0, 86_401] {
            let mut bad = f.clone();
            bad.repair_after_secs = Some(secs);
            let e = NodeConfig::resolve(ConfigFile::default(), bad).unwrap_err();
            assert!(e.to_string().contains("repair delay"), "{e}");
        }
        let mut bad = f.clone();
        bad.join = vec!["127.0.0.1:7800".into()];
        let e = NodeConfig::resolve(ConfigFile::default(), bad).unwrap_err();
        assert!(e.to_string().contains("not a multiaddr"), "{e}");
        let mut bad = f.clone();
        bad.tier = Some("fog".into());
        assert!(NodeConfig::resolve(ConfigFile::default(), bad).is_err());
        let mut bad = f.clone();
        bad.attrs = vec!["novalue".into()];
        assert!(NodeConfig::resolve(ConfigFile::default(), bad).is_err());
        let mut bridge = f.clone();
        bridge.bridge_listen = Some("udp://127.0.0.1:7900".into());
        let c = NodeConfig::resolve(ConfigFile::default(), bridge.clone()).unwrap();
        assert_eq!(
            c.bridge_listen,
            [crate::devices::transport::Transport::Udp(
                "127.0.0.1:7900".parse().unwrap()
            )]
        );
        bridge.bridge_listen = Some("udp://127.0.0.1:7900,tcp://127.0.0.1:7900".into());
        let c = NodeConfig::resolve(ConfigFile::default(), bridge.clone()).unwrap();
        assert_eq!(c.bridge_listen.len(), 2);
        bridge.bridge_listen = Some("quic://127.0.0.1:7900".into());
        let e = NodeConfig::resolve(ConfigFile::default(), bridge).unwrap_err();
        assert!(e.to_string().contains("udp://, tcp:// or serial://"), "{e}");
        let mut alone = flags("/d");
        alone.bridge_listen = Some("udp://127.0.0.1:7900".into());
        let e = NodeConfig::resolve(ConfigFile::default(), alone).unwrap_err();
        assert!(e.to_string().contains("cluster node"), "{e}");
        let mut lonely = flags("/d");
        lonely.join = vec!["/ip4/127.0.0.1/tcp/1".into()];
        assert!(NodeConfig::resolve(ConfigFile::default(), lonely).is_err());
    }

    #[test]
    fn join_timeouts_are_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "-1s",
            "10 parsecs",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let mut f = flags("/d");
        f.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        f.cluster_key = Some(ClusterKey::generate().to_file_text());
        let c = NodeConfig::resolve(ConfigFile::default(), f.clone()).unwrap();
        assert_eq!(
            c.cluster.unwrap().join_timeout,
            None,
            "waits as long as it takes"
        );
        let file = ConfigFile::parse("join_timeout = \"30s\"").unwrap();
        let c = NodeConfig::resolve(file, f.clone()).unwrap();
        assert_eq!(
            c.cluster.unwrap().join_timeout,
            Some(Duration::from_secs(30))
        );
        for bad in ["0s", "25h", "soon"] {
            let mut b = f.clone();
            b.join_timeout = Some(bad.into());
            let e = NodeConfig::resolve(ConfigFile::default(), b).unwrap_err();
            assert!(e.to_string().contains("join timeout"), "{bad}: {e}");
        }
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("yaml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn security_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        crate::auth::tls::make_certs(&pki, &["n1".into()], &[]).unwrap();
        let root = dir.path().join("root.key");
        crate::auth::token::keygen_to(&root).unwrap();
        let public = crate::auth::token::pub_path(&root);
        let file = ConfigFile::parse(&format!(
            "tls_cert = {:?}\ntls_key = {:?}\nrequire_token = true\ntoken_root = {:?}",
            pki.join("n1.pem"),
            pki.join("n1.key"),
            public
        ))
        .unwrap();
        let c = NodeConfig::resolve(file, flags("/b")).unwrap();
        assert!(c.security.tls.is_some());
        // Trusts its own chain when it calls other nodes.
        assert!(c.security.client_tls.is_some());
        assert!(c.security.token_root.is_some());

        let half = Flags {
            tls_cert: Some(pki.join("n1.pem")),
            ..flags("/b")
        };
        assert!(NodeConfig::resolve(ConfigFile::default(), half).is_err());
        let no_root = Flags {
            require_token: true,
            ..flags("/b")
        };
        let err = NodeConfig::resolve(ConfigFile::default(), no_root).unwrap_err();
        assert!(err.to_string().contains("--token-root"), "{err}");
        // The private key is not a root a node takes.
        let private_root = Flags {
            require_token: true,
            token_root: Some(root),
            ..flags("/b")
        };
        let err = NodeConfig::resolve(ConfigFile::default(), private_root).unwrap_err();
        assert!(err.to_string().contains("private"), "{err}");
        // A key that is not the certificate's.
        crate::auth::tls::make_certs(&dir.path().join("other"), &["n1".into()], &[]).unwrap();
        let mismatched = Flags {
            tls_cert: Some(pki.join("n1.pem")),
            tls_key: Some(dir.path().join("other").join("n1.key")),
            ..flags("/b")
        };
        let err = NodeConfig::resolve(ConfigFile::default(), mismatched).unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
    }
}
