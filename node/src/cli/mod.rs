//! The `woof` command line: its grammar and what each command does.

pub mod local_cluster;
mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use woof_consensus::topic::handlers::HANDLER_CODE_BYTES_MAX;
use woof_proto::MESSAGE_BYTES_MAX;
use woof_proto::v1::{self, woof_client::WoofClient};

use crate::error::{Error, Result};
pub use output::Output;

/// The node a CLI talks to unless told otherwise.
pub const SERVER_DEFAULT: &str = "http://127.0.0.1:7700";
/// The most bytes `woof append NAME -` reads from standard input.
const STDIN_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// woof: a durable publish/subscribe overlay for the Internet of Things.
#[derive(Debug, Parser)]
#[command(name = "woof", version, about)]
pub struct Cli {
    /// The node to talk to.
    #[arg(long, global = true, env = "WOOF_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// Print one JSON object per line instead of plain text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The CA certificate (PEM) to trust the node's certificate by, for
    /// https:// addresses. A node takes it too: the CA it trusts when it
    /// calls another node [default: the chain in its --tls-cert].
    #[arg(long, global = true, env = "WOOF_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A capability token (`woof token create`), sent with every request
    /// as `authorization: Bearer TOKEN`.
    #[arg(long, global = true, env = "WOOF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run or manage a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Bind code to topics: it runs once for every committed element.
    #[command(subcommand)]
    Handler(HandlerCommand),
    /// Register microcontrollers for the bridge gateways, and simulate them.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Append one element; prints its sequence number.
    Append(AppendArgs),
    /// Print one element's payload.
    Get { topic: String, seq: u64 },
    /// Print the latest sequence number of a topic.
    Latest { topic: String },
    /// Print a range of elements, one per line: SEQ<TAB>PAYLOAD.
    Scan {
        topic: String,
        /// The first sequence number; by default the oldest held.
        #[arg(long)]
        from: Option<u64>,
        /// How many elements at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow a topic, printing elements as they are appended, until Ctrl-C.
    Tail {
        topic: String,
        /// Start at this sequence number (stored elements first); by default
        /// only new appends are shown.
        #[arg(long)]
        from: Option<u64>,
    },
    /// Show where an element came from and what it caused: the chain of
    /// handler runs back to what a client appended, and the tree of what
    /// handlers made from it, with the node and time of each step.
    Trace { topic: String, seq: u64 },
    /// Cluster keys and status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Capability tokens: root keys, tokens, narrower tokens, revocation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Start an embedded node on this machine and show what woof does.
    Demo,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print a new cluster key (save it to a file: `woof cluster keygen > cluster.key`).
    Keygen,
    /// Show the nodes of the cluster as the node at --server sees them.
    Status,
    /// Start a cluster of node processes on this machine's loopback.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Their tiers, such as edge:2,cloud:3 [default: all edge].
        #[arg(long, default_value = "")]
        tiers: String,
        /// Where the nodes keep their data, logs and the cluster key.
        #[arg(long)]
        dir: PathBuf,
        /// Node i serves gRPC on BASE+i, its dashboard on BASE+50+i and
        /// the overlay on BASE+100+i.
        #[arg(long, default_value_t = 7700)]
        base_port: u16,
        /// Serve TLS and require tokens: makes a CA and node certificates
        /// (DIR/pki), a root key (DIR/root.key) and a token that may do
        /// everything (DIR/admin.token), and says how to use them.
        #[arg(long)]
        secure: bool,
    },
    /// Stop the cluster `cluster up` started in --dir (its data stays).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a CA and a certificate per node for a test cluster, in --dir:
    /// ca.pem (give it to clients as --ca), and NAME.pem / NAME.key (the
    /// node's --tls-cert / --tls-key), each valid for localhost, 127.0.0.1,
    /// ::1 and its name.
    Certs {
        #[arg(long)]
        dir: PathBuf,
        /// Name the nodes node-1 .. node-N.
        #[arg(long, conflicts_with = "names")]
        nodes: Option<usize>,
        /// Or name them (comma-separated).
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// More host names or IP addresses every certificate is valid for
        /// (comma-separated).
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a root key pair: the private key to --out (mode 0600), the
    /// public one printed and written to OUT.pub (nodes' --token-root).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a token signed by the root key; prints it.
    Create {
        /// The private root key (`woof token keygen`).
        #[arg(long)]
        root_key: PathBuf,
        /// Topic patterns: NAME, NAME/** (it and all under it) or **
        /// (comma-separated).
        #[arg(long, required = true, value_delimiter = ',')]
        topics: Vec<String>,
        /// Operations: read, append, subscribe, admin, deploy
        /// (comma-separated).
        #[arg(long, required = true)]
        ops: String,
        /// Its lifetime, such as 1h, 30d.
        #[arg(long, default_value = "30d")]
        expires: String,
    },
    /// Make a narrower token from TOKEN, offline and without the root key.
    Attenuate {
        token: String,
        /// Only these topic patterns (within the token's).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Only these operations.
        #[arg(long)]
        ops: Option<String>,
        /// A shorter lifetime, such as 1h.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print a token's ids (the first revokes it and every token made from
    /// it) and its rules.
    Inspect { token: String },
    /// Revoke a token by its id (from `woof token inspect`): every node
    /// refuses it within seconds. Needs a token with admin on **.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device; prints its key, once.
    Add {
        id: String,
        /// Topic patterns it may append to, comma-separated (`*` is one
        /// segment, a final `**` any number); a frame's topic index i names
        /// the i-th if it has no wildcard.
        #[arg(long, required = true)]
        topics: Vec<String>,
        /// Topic patterns it may follow.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Its key (32 hex digits), if it already has one; else one is made.
        #[arg(long, conflicts_with = "fleet")]
        key: Option<String>,
        /// Register ID-1 .. ID-N instead, each with its own key derived from
        /// one fleet key, printed once (`woof device sim --devices N` and
        /// firmware derive them the same way).
        #[arg(long, value_name = "N")]
        fleet: Option<u32>,
    },
    /// The registered devices.
    List,
    /// Unregister a device: gateways refuse its frames from then on.
    Rm { id: String },
    /// Give a device a new key (printed once); the old one stops working.
    Rotate { id: String },
    /// Run a simulated device (the same no_std core a microcontroller runs)
    /// against gateways over UDP, through a lossy link; prints what was
    /// sent, acknowledged, retransmitted and lost.
    Sim(DeviceSimArgs),
}

#[derive(Debug, Args)]
pub struct DeviceSimArgs {
    /// Gateways, udp://HOST:PORT[,udp://...]: the device moves to the next
    /// when one stops answering.
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub id: String,
    /// The key `woof device add` printed (or set WOOF_DEVICE_KEY).
    #[arg(long, env = "WOOF_DEVICE_KEY", hide_env_values = true)]
    pub key: String,
    /// The topic its readings go to.
    #[arg(long)]
    pub topic: String,
    /// Readings a second, such as 5/s (or 5).
    #[arg(long, default_value = "5/s")]
    pub rate: String,
    /// How many readings.
    #[arg(long, default_value_t = 50)]
    pub count: u64,
    /// The fraction of frames the link loses each way, 0 to 0.9.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Seeds the link's losses.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds to wait for the last answers.
    #[arg(long, default_value_t = 90)]
    pub drain: u64,
    /// Run N devices, ID-1 .. ID-N, each with its key derived from --key as
    /// a fleet key (as `woof device add ID --fleet N` registered them).
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Also follow this topic from its first element, printing how many
    /// elements arrived (once each, in order).
    #[arg(long)]
    pub follow: Option<String>,
    /// With --follow: run until this many elements arrived (or --drain ends).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// Invoke the gateway's handler of this name (bound to one of the
    /// device's topics) each tick instead of appending a reading, or run
    /// --local on the device: whichever answered faster lately.
    #[arg(long, requires = "local")]
    pub offload: Option<String>,
    /// With --offload: the device's own implementation, a native handler
    /// (`woof handler builtins`).
    #[arg(long, requires = "offload")]
    pub local: Option<String>,
    /// With --local: its config (JSON), as the gateway's handler has it.
    #[arg(long, default_value = "")]
    pub local_config: String,
    /// With --local: milliseconds a local run costs on top, standing for a
    /// microcontroller that much slower than this machine.
    #[arg(long, default_value_t = 0)]
    pub local_cost_ms: u64,
}

impl DeviceSimArgs {
    pub fn config(&self) -> Result<crate::devices::simulator::SimConfig> {
        let rate = self.rate.trim().trim_end_matches("/s");
        let rate: f64 = rate.parse().map_err(|_| {
            Error::Usage(format!("--rate {:?} is not a rate such as 5/s", self.rate))
        })?;
        Ok(crate::devices::simulator::SimConfig {
            gateways: crate::devices::simulator::parse_gateways(&self.gateway)?,
            id: self.id.clone(),
            key: crate::devices::registry::parse_key(&self.key)?,
            topic: self.topic.clone(),
            rate,
            count: self.count,
            loss: self.loss,
            seed: self.seed,
            drain: std::time::Duration::from_secs(self.drain.min(3600)),
            follow: self.follow.clone(),
            expect_deliveries: self.expect,
            offload: match (&self.offload, &self.local) {
                (Some(handler), Some(builtin)) => {
                    crate::handlers::native::build(builtin, &self.local_config)
                        .map_err(|e| Error::Usage(format!("--local {builtin}: {e}")))?;
                    Some(crate::devices::simulator::OffloadConfig {
                        handler: handler.clone(),
                        builtin: builtin.clone(),
                        config: self.local_config.clone(),
                        local_cost: std::time::Duration::from_millis(
                            self.local_cost_ms.min(60_000),
                        ),
                    })
                }
                _ => None,
            },
            reading: crate::devices::simulator::default_reading,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a node in the foreground until Ctrl-C.
    Start(NodeStartArgs),
}

#[derive(Debug, Args)]
pub struct NodeStartArgs {
    /// A TOML file with the settings below; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the node keeps its data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The address to serve gRPC on [default: 127.0.0.1:7700].
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Join a cluster: the overlay address to listen on, such as
    /// /ip4/127.0.0.1/tcp/7800 (repeatable). Without it the node is standalone.
    #[arg(long)]
    pub listen: Vec<String>,
    /// A node of the cluster to join through, such as /ip4/127.0.0.1/tcp/7800
    /// (no peer id needed; repeatable). Until one answers the node dials them
    /// again, 100 ms after the first try doubling to every 5 s, so nodes
    /// started together come up in any order. A node restarted on its data
    /// directory also dials the nodes it knew, with or without --join.
    #[arg(long)]
    pub join: Vec<String>,
    /// The port other nodes open links to this one on (the Raft groups'
    /// traffic, on the IP of the first --listen address): a number, `any`
    /// (a free one) or `off` (links come over the overlay's libp2p
    /// connection) [default: any].
    #[arg(long, value_name = "PORT|any|off")]
    pub link_port: Option<String>,
    /// Do not hand leaderships over to nodes that lead fewer of the topics
    /// both hold (on by default: busy topics' leaders spread over the
    /// nodes). Give it to every node to stop all such moves.
    #[arg(long)]
    pub no_leader_balance: bool,
    /// Give up joining after this long, such as 30s or 2m, with an error
    /// [default: never].
    #[arg(long, value_name = "DURATION")]
    pub join_timeout: Option<String>,
    /// The cluster key file (from `woof cluster keygen`); or set WOOF_CLUSTER_KEY
    /// to the key itself.
    #[arg(long)]
    pub cluster_key: Option<PathBuf>,
    /// device, edge or cloud [default: edge].
    #[arg(long)]
    pub tier: Option<String>,
    /// An attribute to advertise, key=value (repeatable).
    #[arg(long = "attr")]
    pub attrs: Vec<String>,
    /// A capability to advertise (repeatable).
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// Replace a topic's replica on a node silent this many seconds
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    pub repair_after: Option<u64>,
    /// Serve microcontrollers the bridge protocol here, such as
    /// udp://0.0.0.0:7900,tcp://0.0.0.0:7900 or serial:///dev/ttyUSB0?baud=115200
    /// (cluster nodes only).
    #[arg(long, value_name = "udp://HOST:PORT[,tcp://..][,serial://..]")]
    pub bridge_listen: Option<String>,
    /// How to write the log to standard error: text, or json (one object
    /// per line, for log shippers) [default: text]. Each line a gRPC request
    /// logs names its rpc, topic and peer (the client's address).
    #[arg(long, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Serve Prometheus metrics (GET /metrics) on this address, such as
    /// 127.0.0.1:9100.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the web dashboard on this address, such as 127.0.0.1:7780
    /// (with --require-token, the page asks for a token).
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Serve the client API over TLS with this certificate (chain, PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse every request without a token signed by --token-root's key.
    #[arg(long)]
    pub require_token: bool,
    /// The public root key (root.key.pub from `woof token keygen`).
    #[arg(long, value_name = "FILE")]
    pub token_root: Option<PathBuf>,
}

impl NodeStartArgs {
    /// The flags as config overrides.
    pub fn flags(self) -> crate::config::Flags {
        crate::config::Flags {
            data_dir: self.data_dir,
            grpc_listen: self.grpc_listen,
            listen: self.listen,
            join: self.join,
            cluster_key_file: self.cluster_key,
            cluster_key: std::env::var(crate::config::CLUSTER_KEY_ENV).ok(),
            tier: self.tier,
            attrs: self.attrs,
            capabilities: self.capabilities,
            repair_after_secs: self.repair_after,
            bridge_listen: self.bridge_listen,
            link_port: self.link_port,
            no_leader_balance: self.no_leader_balance,
            join_timeout: self.join_timeout,
            metrics_listen: self.metrics_listen,
            http_listen: self.http_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            // The global --ca; main sets it.
            ca: None,
            require_token: self.require_token,
            token_root: self.token_root,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// The largest element, in bytes [default: 1048576].
        #[arg(long)]
        element_max_bytes: Option<u32>,
        /// How many of the newest elements to keep [default: 1000000].
        #[arg(long)]
        history: Option<u64>,
        /// How many replicas keep it: 1, 3 or 5 [default: 3 in a cluster,
        /// 1 on a standalone node].
        #[arg(long)]
        replication: Option<u32>,
        /// Which nodes may hold the replicas, such as `tier=cloud` or
        /// `tier=edge:1,tier=cloud:2` [default: the nodes nearest the name].
        #[arg(long, value_name = "EXPR")]
        replicas: Option<String>,
    },
    /// List all topics.
    List,
    /// Show a topic's settings and range.
    Describe { name: String },
    /// Delete a topic and all its elements.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum HandlerCommand {
    /// Bind a handler to a topic.
    Deploy {
        #[command(flatten)]
        code: HandlerCode,
        /// Where it starts: a sequence number, or `earliest` (the first
        /// element held) [default: the next element appended].
        #[arg(long)]
        from: Option<String>,
    },
    /// Replace a handler's code, placement or config; the new version takes
    /// over at the first element the old one had not finished.
    Update {
        #[command(flatten)]
        code: HandlerCode,
    },
    /// List the handlers of a topic, with their progress and lag.
    List { topic: String },
    /// Show one handler.
    Describe { topic: String, name: String },
    /// Unbind a handler.
    Rm { topic: String, name: String },
    /// Let a parked handler run again, from the element it failed on.
    Resume { topic: String, name: String },
    /// Show a handler's recent invocations on the node that runs it: node,
    /// element, time taken, outcome, error and what it logged.
    Logs {
        topic: String,
        name: String,
        /// Keep showing new invocations until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// How many of the newest to show first (at most 1,000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List the native handlers this CLI's build knows.
    Builtins,
}

/// A handler's topic, name and code, as deploy and update take them.
#[derive(Debug, Args)]
pub struct HandlerCode {
    pub topic: String,
    pub name: String,
    /// A native handler compiled into the node (`woof handler builtins`).
    #[arg(long, value_name = "BUILTIN", required_unless_present = "python")]
    pub native: Option<String>,
    /// A Python file defining `handle(ctx, seq, payload)`.
    #[arg(long, value_name = "FILE", conflicts_with = "native")]
    pub python: Option<PathBuf>,
    /// Where it runs [default: `leader()`].
    #[arg(long, value_name = "EXPR", default_value = "")]
    pub placement: String,
    /// Its config, as JSON text.
    #[arg(long, value_name = "JSON", default_value = "")]
    pub config: String,
    /// A Python handler's time budget per invocation [default: the node's, 1000].
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub time_budget_ms: u32,
    /// A Python handler's memory cap per invocation [default: the node's, 64].
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub memory_mib: u32,
    /// Run only for elements whose append names it (`woof append TOPIC DATA
    /// --handler NAME`), not for every element.
    #[arg(long)]
    pub on_demand: bool,
}

impl HandlerCode {
    /// The handler as the API takes it (reading the Python file).
    fn into_handler(self) -> Result<v1::Handler> {
        let code = match (self.native, self.python) {
            (Some(n), _) => v1::handler::Code::Native(n),
            (None, Some(path)) => {
                let io = |e| Error::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                };
                let size = std::fs::metadata(&path).map_err(io)?.len();
                if size > HANDLER_CODE_BYTES_MAX as u64 {
                    return Err(Error::Usage(format!(
                        "{} is {size} bytes; handler source is at most {HANDLER_CODE_BYTES_MAX}",
                        path.display()
                    )));
                }
                let source = std::fs::read(&path).map_err(io)?;
                let source = String::from_utf8(source)
                    .map_err(|_| Error::Usage(format!("{} is not UTF-8 text", path.display())))?;
                v1::handler::Code::Python(source)
            }
            (None, None) => return Err(Error::Usage("give --native or --python".into())),
        };
        Ok(v1::Handler {
            topic: self.topic,
            name: self.name,
            code: Some(code),
            placement: self.placement,
            config: self.config,
            time_budget_ms: self.time_budget_ms,
            memory_mib: self.memory_mib,
            on_demand: self.on_demand,
            ..Default::default()
        })
    }
}

/// `--from`: a sequence number or `earliest`.
fn parse_from(from: Option<String>) -> Result<(u64, bool)> {
    match from.as_deref() {
        None => Ok((0, false)),
        Some("earliest") => Ok((0, true)),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok((n, false)),
            _ => Err(Error::Usage(format!(
                "--from {s:?}: a sequence number (from 1) or `earliest`"
            ))),
        },
    }
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    pub topic: String,
    /// The element's bytes, or `-` to read them from standard input.
    pub data: String,
    /// A producer id, to make retries safe (needs --producer-seq).
    #[arg(long, requires = "producer_seq")]
    pub producer: Option<String>,
    /// This append's number in the producer's own sequence.
    #[arg(long, requires = "producer")]
    pub producer_seq: Option<u64>,
    /// Run this handler (one deployed with --on-demand) for this element.
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// Each line of standard input (data `-`) is one element, appended in
    /// order on one stream, read ahead of the answers; prints each line's
    /// number as it commits. With --producer, --producer-seq numbers the
    /// first line and the next lines follow.
    #[arg(long)]
    pub lines: bool,
}

/// A gRPC client of a node, sending a token with each request if it has one.
pub type Client = WoofClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer TOKEN` to each request (nothing without a
/// token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// From a token's text.
    pub fn token(token: &str) -> Result<Self> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| Error::Usage("the token is not printable ASCII text".into()))?;
        Ok(Self(Some(value)))
    }

    /// The header a request came with, passed on unchanged (a node
    /// forwarding a client's request to another node).
    pub fn from_request(metadata: &tonic::metadata::MetadataMap) -> Self {
        Self(metadata.get("authorization").cloned())
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How a client reaches a node: the CA it trusts (for https://) and the
/// token it sends.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub tls: Option<crate::auth::tls::ClientTls>,
    pub bearer: Bearer,
}

impl ClientOptions {
    /// From the global --ca and --token.
    pub fn from_cli(ca: Option<&std::path::Path>, token: Option<&str>) -> Result<Self> {
        Ok(Self {
            tls: ca.map(crate::auth::tls::ClientTls::load).transpose()?,
            bearer: match token {
                Some(t) if !t.trim().is_empty() => Bearer::token(t)?,
                _ => Bearer::default(),
            },
        })
    }
}

/// Connects to a node, without TLS or token.
pub async fn connect(server: &str) -> Result<Client> {
    connect_with(server, &ClientOptions::default()).await
}

/// Connects to a node: over TLS for an https:// address (trusting
/// `options.tls`'s CA), sending `options.bearer`'s token.
pub async fn connect_with(server: &str, options: &ClientOptions) -> Result<Client> {
    let unreachable = |reason: String| Error::Connect {
        server: server.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| unreachable(format!("not a valid URL ({e})")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let https = server.starts_with("https://");
    if https {
        let Some(tls) = &options.tls else {
            return Err(Error::Usage(format!(
                "{server} is https://: give the CA that signed the node's certificate \
                 with --ca FILE or WOOF_CA"
            )));
        };
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| unreachable(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(explain(&crate::auth::tls::chain(&e), https, options)))?;
    Ok(
        WoofClient::with_interceptor(channel, options.bearer.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
    )
}

/// Says what a failed connection most likely means.
fn explain(reason: &str, https: bool, options: &ClientOptions) -> String {
    let ca = options
        .tls
        .as_ref()
        .map_or_else(String::new, |t| t.source.clone());
    if https && (reason.contains("UnknownIssuer") || reason.contains("invalid peer certificate")) {
        format!(
            "the node's TLS certificate is not trusted by the CA in {ca} (is it the CA that \
             signed the node's certificate?): {reason}"
        )
    } else if https && (reason.contains("InvalidContentType") || reason.contains("corrupt message"))
    {
        format!("the node does not speak TLS there (use http://): {reason}")
    } else {
        reason.to_string()
    }
}

/// Whether the node at `server` (an http:// address) answers a TLS
/// handshake: a plaintext client on a TLS port sees only a cut HTTP/2
/// connection (CANCELLED, UNKNOWN or UNAVAILABLE, by timing), so on such an
/// error the CLI asks the port itself. The handshake trusts no CA: a
/// certificate refused as unknown is all it needs to see.
async fn speaks_tls(server: &str) -> bool {
    let Some(rest) = server.strip_prefix("http://") else {
        return false;
    };
    let Ok(endpoint) = Endpoint::from_shared(format!("https://{rest}")) else {
        return false;
    };
    let Ok(endpoint) = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tonic::transport::ClientTlsConfig::new())
    else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await {
        Ok(Err(e)) => {
            let why = crate::auth::tls::chain(&e);
            why.contains("invalid peer certificate") || why.contains("UnknownIssuer")
        }
        _ => false,
    }
}

/// A plaintext client's error from a TLS port, explained.
async fn explain_failure(server: &str, error: Error) -> Error {
    let cut = match &error {
        Error::Rpc(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
        ),
        Error::Connect { .. } => true,
        _ => false,
    };
    if cut && server.starts_with("http://") && speaks_tls(server).await {
        return Error::Connect {
            server: server.to_string(),
            reason: format!(
                "the node serves TLS on this port: use https://{} with --ca FILE \
                 (the CA that signed its certificate); plaintext gets only a cut connection ({error})",
                server.trim_start_matches("http://")
            ),
        };
    }
    error
}

/// Runs a client command (everything but `node start` and `demo`).
pub async fn run_client(
    server: &str,
    options: &ClientOptions,
    command: Command,
    out: &mut Output,
) -> Result<()> {
    let mut client = match connect_with(server, options).await {
        Ok(c) => c,
        Err(e) => return Err(explain_failure(server, e).await),
    };
    match run_command(server, &mut client, command, out).await {
        Err(e) => Err(explain_failure(server, e).await),
        ok => ok,
    }
}

async fn run_command(
    server: &str,
    client: &mut Client,
    command: Command,
    out: &mut Output,
) -> Result<()> {
    match command {
        Command::Topic(TopicCommand::Create {
            name,
            element_max_bytes,
            history,
            replication,
            replicas,
        }) => {
            let config = v1::TopicConfig {
                element_max_bytes: element_max_bytes.unwrap_or(0),
                history: history.unwrap_or(0),
            };
            if element_max_bytes == Some(0) || history == Some(0) || replication == Some(0) {
                return Err(Error::Usage(
                    "--element-max-bytes, --history and --replication must be at least 1".into(),
                ));
            }
            let r = client
                .create_topic(v1::CreateTopicRequest {
                    name,
                    config: Some(config),
                    replication: replication.unwrap_or(0),
                    replicas: replicas.unwrap_or_default(),
                })
                .await?
                .into_inner();
            out.topic(&r.topic.unwrap_or_default(), "created");
        }
        Command::Topic(TopicCommand::List) => {
            let r = client
                .list_topics(v1::ListTopicsRequest {})
                .await?
                .into_inner();
            out.topics(&r.topics);
        }
        Command::Topic(TopicCommand::Describe { name }) => {
            let r = client
                .describe_topic(v1::DescribeTopicRequest { name })
                .await?
                .into_inner();
            out.topic(&r.topic.unwrap_or_default(), "");
        }
        Command::Topic(TopicCommand::Delete { name }) => {
            client
                .delete_topic(v1::DeleteTopicRequest { name: name.clone() })
                .await?;
            out.deleted(&name);
        }
        Command::Append(args) if args.lines => append_lines(client, args, out).await?,
        Command::Append(args) => {
            let payload = if args.data == "-" {
                read_stdin().await?
            } else {
                args.data.into_bytes()
            };
            let producer = match (args.producer, args.producer_seq) {
                (Some(id), Some(seq)) => Some(v1::Producer { id, seq }),
                _ => None,
            };
            let r = client
                .append(v1::AppendRequest {
                    topic: args.topic,
                    payload: payload.into(),
                    producer,
                    handler: args.handler.unwrap_or_default(),
                })
                .await?
                .into_inner();
            out.appended(r.seq, r.duplicate);
        }
        Command::Get { topic, seq } => {
            let r = client
                .get(v1::GetRequest { topic, seq })
                .await?
                .into_inner();
            out.payload(&r.element.unwrap_or_default());
        }
        Command::Latest { topic } => {
            let r = client
                .latest(v1::LatestRequest { topic })
                .await?
                .into_inner();
            out.latest(r.last_seq, r.first_seq);
        }
        Command::Scan { topic, from, limit } => {
            let from_seq = match from {
                Some(seq) => seq,
                None => {
                    let r = client
                        .latest(v1::LatestRequest {
                            topic: topic.clone(),
                        })
                        .await?
                        .into_inner();
                    r.first_seq.max(1)
                }
            };
            let r = client
                .scan(v1::ScanRequest {
                    topic,
                    from_seq,
                    limit,
                })
                .await?
                .into_inner();
            for e in &r.elements {
                out.element(e);
            }
        }
        Command::Tail { topic, from } => {
            use v1::subscribe_request::Start;
            let start = match from {
                Some(seq) => Start::FromSeq(seq),
                None => Start::Latest(true),
            };
            let mut stream = client
                .subscribe(v1::SubscribeRequest {
                    topic,
                    start: Some(start),
                })
                .await?
                .into_inner();
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(Ok(r)) => out.element(&r.element.unwrap_or_default()),
                        Some(Err(status)) => return Err(status.into()),
                        None => return Err(Error::Connect {
                            server: server.to_string(),
                            reason: "the node ended the stream".into(),
                        }),
                    },
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Command::Cluster(ClusterCommand::Status) => {
            let r = client
                .cluster_status(v1::ClusterStatusRequest {})
                .await?
                .into_inner();
            out.nodes(&r.nodes, &r.topics);
            if !r.topics.is_empty() {
                out.blank();
                out.topics(&r.topics);
            }
        }
        Command::Handler(HandlerCommand::Deploy { code, from }) => {
            let (from_seq, from_earliest) = parse_from(from)?;
            let r = client
                .deploy_handler(v1::DeployHandlerRequest {
                    handler: Some(code.into_handler()?),
                    from_seq,
                    from_earliest,
                })
                .await?
                .into_inner();
            out.handler(&r.handler.unwrap_or_default(), "deployed");
        }
        Command::Handler(HandlerCommand::Update { code }) => {
            let r = client
                .update_handler(v1::DeployHandlerRequest {
                    handler: Some(code.into_handler()?),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.handler(&r.handler.unwrap_or_default(), "updated");
        }
        Command::Handler(HandlerCommand::List { topic }) => {
            let r = client
                .list_handlers(v1::ListHandlersRequest { topic })
                .await?
                .into_inner();
            for h in &r.handlers {
                out.handler(h, "");
            }
        }
        Command::Handler(HandlerCommand::Describe { topic, name }) => {
            let r = client
                .list_handlers(v1::ListHandlersRequest {
                    topic: topic.clone(),
                })
                .await?
                .into_inner();
            let Some(h) = r.handlers.iter().find(|h| h.name == name) else {
                return Err(Error::Usage(format!(
                    "no handler {name:?} is bound to topic {topic:?}"
                )));
            };
            out.handler(h, "");
            let logs = client
                .handler_logs(v1::HandlerLogsRequest {
                    topic,
                    name,
                    limit: 1,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.handler_counts(&logs);
        }
        Command::Handler(HandlerCommand::Logs {
            topic,
            name,
            follow,
            limit,
        }) => {
            // A handler placed by `all(...)` keeps records on each node it
            // runs on: read every instance's.
            let r = client
                .list_handlers(v1::ListHandlersRequest {
                    topic: topic.clone(),
                })
                .await?
                .into_inner();
            let instances: Vec<String> = r
                .handlers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.instances.iter().map(|i| i.node.clone()).collect())
                .unwrap_or_default();
            // Per instance (one unnamed if it runs on one node): the last
            // invocation seen, and the node whose records those were.
            let mut seen: Vec<(String, u64, String)> = match instances.is_empty() {
                true => vec![(String::new(), 0, String::new())],
                false => instances
                    .into_iter()
                    .map(|n| (n, 0, String::new()))
                    .collect(),
            };
            loop {
                for (instance, after, node) in seen.iter_mut() {
                    let logs = loop {
                        let asked = client
                            .handler_logs(v1::HandlerLogsRequest {
                                topic: topic.clone(),
                                name: name.clone(),
                                after: *after,
                                limit: if *after == 0 { limit } else { 1000 },
                                here_only: false,
                                node: instance.clone(),
                            })
                            .await;
                        let logs = match asked {
                            Ok(logs) => logs.into_inner(),
                            // One instance's node out of reach: the others'
                            // records still show.
                            Err(e) if !instance.is_empty() => {
                                eprintln!("{instance}: {}", e.message());
                                break v1::HandlerLogsResponse::default();
                            }
                            Err(e) => return Err(e.into()),
                        };
                        if logs.node != *node {
                            // It moved (or started): its new node numbers afresh.
                            *node = logs.node.clone();
                            if *after > 0 {
                                *after = 0;
                                continue;
                            }
                        }
                        break logs;
                    };
                    for i in &logs.invocations {
                        out.invocation(&logs.node, i);
                        *after = (*after).max(i.id);
                    }
                }
                if !follow {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        Command::Trace { topic, seq } => {
            let r = client
                .trace(v1::TraceRequest { topic, seq })
                .await?
                .into_inner();
            out.trace(&r);
        }
        Command::Handler(HandlerCommand::Resume { topic, name }) => {
            let r = client
                .resume_handler(v1::RemoveHandlerRequest { topic, name })
                .await?
                .into_inner();
            out.handler(&r.handler.unwrap_or_default(), "resumed");
        }
        Command::Handler(HandlerCommand::Rm { topic, name }) => {
            client
                .remove_handler(v1::RemoveHandlerRequest {
                    topic: topic.clone(),
                    name: name.clone(),
                })
                .await?;
            out.removed_handler(&topic, &name);
        }
        Command::Device(DeviceCommand::Add {
            id,
            topics,
            subscribe,
            key,
            fleet: None,
        }) => {
            let r = client
                .add_device(v1::AddDeviceRequest {
                    id,
                    topics,
                    subscribe,
                    key: key.unwrap_or_default(),
                    fleet: 0,
                })
                .await?
                .into_inner();
            out.device_key(&r, "added");
        }
        Command::Device(DeviceCommand::Add {
            id,
            topics,
            subscribe,
            fleet: Some(n),
            ..
        }) => {
            if n == 0 {
                return Err(Error::Usage("--fleet takes 1 device or more".into()));
            }
            let r = client
                .add_device(v1::AddDeviceRequest {
                    id: id.clone(),
                    topics,
                    subscribe,
                    key: String::new(),
                    fleet: n,
                })
                .await?
                .into_inner();
            out.fleet_key(&id, n, &r.key);
        }
        Command::Device(DeviceCommand::List) => {
            let r = client
                .list_devices(v1::ListDevicesRequest {})
                .await?
                .into_inner();
            out.devices(&r.devices);
        }
        Command::Device(DeviceCommand::Rm { id }) => {
            client
                .remove_device(v1::RemoveDeviceRequest { id: id.clone() })
                .await?;
            out.removed_device(&id);
        }
        Command::Device(DeviceCommand::Rotate { id }) => {
            let r = client
                .rotate_device(v1::RemoveDeviceRequest { id })
                .await?
                .into_inner();
            out.device_key(&r, "rotated");
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let Some(bytes) = crate::auth::unhex(&id) else {
                return Err(Error::Usage(format!(
                    "{id:?} is not a token id (hex, from `woof token inspect`)"
                )));
            };
            client
                .revoke_token(v1::RevokeTokenRequest {
                    id: crate::auth::hex(&bytes),
                })
                .await?;
            out.revoked(&id);
        }
        Command::Node(_)
        | Command::Token(
            TokenCommand::Keygen { .. }
            | TokenCommand::Create { .. }
            | TokenCommand::Attenuate { .. }
            | TokenCommand::Inspect { .. },
        )
        | Command::Device(DeviceCommand::Sim(_))
        | Command::Demo
        | Command::Handler(HandlerCommand::Builtins)
        | Command::Cluster(
            ClusterCommand::Keygen
            | ClusterCommand::Up { .. }
            | ClusterCommand::Down { .. }
            | ClusterCommand::Certs { .. },
        ) => unreachable!("handled by main"),
    }
    Ok(())
}

/// Lines `woof append --lines` sends ahead of their answers.
const LINES_AHEAD: usize = 1_024;

/// `woof append TOPIC - --lines`: each line of standard input one element,
/// on one `AppendStream`, each answer printed as it comes. A line that is
/// refused is reported on standard error with its number, and the others
/// go on; the command then fails.
async fn append_lines(client: &mut Client, args: AppendArgs, out: &mut Output) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    use v1::append_stream_response::Outcome;
    if args.data != "-" {
        return Err(Error::Usage(
            "--lines reads standard input: give - as the data".into(),
        ));
    }
    let AppendArgs {
        topic,
        producer,
        producer_seq,
        handler,
        ..
    } = args;
    let (tx, rx) = tokio::sync::mpsc::channel(LINES_AHEAD);
    let reader = tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut read = 0u64;
        loop {
            let mut line = Vec::new();
            (&mut stdin)
                .take(STDIN_BYTES_MAX + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| Error::Io {
                    context: "reading standard input".into(),
                    source,
                })?;
            if line.is_empty() {
                return Ok(read);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if line.len() as u64 > STDIN_BYTES_MAX {
                return Err(Error::Usage(format!(
                    "line {} holds more than {STDIN_BYTES_MAX} bytes, the largest element woof takes",
                    read + 1
                )));
            }
            let producer = producer.as_ref().map(|id| v1::Producer {
                id: id.clone(),
                seq: producer_seq.unwrap_or(1).saturating_add(read),
            });
            read += 1;
            let request = v1::AppendRequest {
                topic: topic.clone(),
                payload: line.into(),
                producer,
                handler: handler.clone().unwrap_or_default(),
            };
            if tx.send(request).await.is_err() {
                return Ok(read);
            }
        }
    });
    let mut answers = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut answered, mut refused) = (0u64, 0u64);
    while let Some(answer) = answers.message().await? {
        answered += 1;
        match answer.outcome {
            Some(Outcome::Appended(a)) => out.appended(a.seq, a.duplicate),
            Some(Outcome::Error(e)) => {
                refused += 1;
                eprintln!(
                    "line {answered}: {}: {}",
                    crate::error::code_name(tonic::Code::from(e.code)),
                    e.message
                );
            }
            None => return Err(Error::Usage(format!("line {answered}: an empty answer"))),
        }
    }
    let read = reader
        .await
        .map_err(|e| Error::Usage(format!("reading lines: {e}")))??;
    if answered < read {
        return Err(Error::Usage(format!(
            "the stream ended after {answered} of {read} lines"
        )));
    }
    if refused > 0 {
        return Err(Error::Usage(format!(
            "{refused} of {read} lines were not appended"
        )));
    }
    Ok(())
}

async fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::io::stdin()
        .take(STDIN_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|source| Error::Io {
            context: "reading standard input".into(),
            source,
        })?;
    if buf.len() as u64 > STDIN_BYTES_MAX {
        return Err(Error::Usage(format!(
            "standard input holds more than {STDIN_BYTES_MAX} bytes, the largest element woof takes"
        )));
    }
    Ok(buf)
}
