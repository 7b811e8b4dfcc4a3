//! The `woof` binary: parses the command line and hands over to the library.

use clap::Parser;
use woof_node::cli::{
    self, Cli, ClientOptions, ClusterCommand, Command, NodeCommand, Output, TokenCommand,
    local_cluster,
};
use woof_node::config::{ConfigFile, LogFormat, NodeConfig};
use woof_node::server::Node;

/// mimalloc rather than the C library's allocator: with many topics
/// appended to at once, glibc's `malloc` and `free` took about a tenth of
/// the nodes' CPU, and mimalloc cut the CPU per append by about a tenth
/// (ADR 48, which supersedes ADR 21). RocksDB's own allocations stay on
/// glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_arena_eager_commit` (its `mimalloc.h`; the
/// `libmimalloc-sys` crate names no constant for it). `node/tests/cli.rs`
/// (`the_allocator_commits_its_memory_as_used`) fails if it is not in
/// force when mimalloc makes its arena, or names another option.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc's memory committed as it is used and given back when freed,
/// not an arena committed whole (its default on Linux), with which a node
/// held about half as much memory again as with glibc (ADR 48). mimalloc
/// makes that arena at the first allocation, which comes before `main`
/// (Rust's runtime allocates as it starts): set in `main`, the option came
/// too late. A constructor runs before any of it; priority 100 puts this
/// one before mimalloc's own (101) as well, and an option set stays set
/// when mimalloc reads its options. Linux only: elsewhere mimalloc does
/// not commit an arena whole, and the section is ELF's.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static MIMALLOC_OPTIONS: extern "C" fn() = mimalloc_options;

#[cfg(target_os = "linux")]
extern "C" fn mimalloc_options() {
    // SAFETY: stores one option's value in mimalloc's table of options;
    // nothing else runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

fn main() -> std::process::ExitCode {
    // A node starts its own binary again to run a Python handler in a
    // sandboxed process (ADR 12); that process does nothing else.
    if std::env::args_os().nth(1).as_deref() == Some(woof_python::WORKER_ARG.as_ref()) {
        return std::process::ExitCode::from(woof_python::worker::serve().clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(NodeCommand::Start(args)) => {
            let file = match &args.config {
                Some(path) => ConfigFile::load(path)?,
                None => ConfigFile::default(),
            };
            let format = match (args.log_format, &file.log_format) {
                (Some(format), _) => format,
                (None, Some(text)) => text.parse()?,
                (None, None) => LogFormat::Text,
            };
            // libp2p's Kademlia warns about every bootstrap of a lone node, and
            // openraft logs every failed heartbeat to a stopped peer as an
            // error, ten times a second; WOOF_LOG=openraft=debug shows them.
            init_logs("info,libp2p_kad=error,openraft=off", format);
            let mut flags = args.flags();
            flags.ca = cli.ca.clone();
            let config = NodeConfig::resolve(file, flags)?;
            let stop_signal = shutdown_signal();
            let mut node = Node::start(&config).await?;
            println!("woof node serving gRPC on {}", node.url());
            if let Some(addr) = node.metrics_addr() {
                println!("woof node serving metrics on http://{addr}/metrics");
            }
            let failed = tokio::select! {
                result = node.wait() => Some(result),
                _ = stop_signal => None,
            };
            // Also after a failure: the rest of the node stops in order.
            let stopped = node.stop().await;
            if let Some(result) = failed {
                result?;
            }
            stopped?;
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Command::Cluster(ClusterCommand::Certs {
            dir,
            nodes,
            names,
            san,
        }) => {
            let names = match (nodes, names.is_empty()) {
                (Some(n), _) => (1..=n).map(|i| format!("node-{i}")).collect(),
                (None, false) => names,
                (None, true) => (1..=3).map(|i| format!("node-{i}")).collect(),
            };
            let written = woof_node::auth::tls::make_certs(&dir, &names, &san)?;
            println!("CA: {} (clients: --ca {0})", written.ca.display());
            for (name, cert, key) in &written.nodes {
                println!(
                    "{name}: --tls-cert {} --tls-key {}",
                    cert.display(),
                    key.display()
                );
            }
            Ok(())
        }
        Command::Token(TokenCommand::Keygen { out }) => {
            let public = woof_node::auth::token::keygen_to(&out)?;
            println!("{public}");
            eprintln!(
                "private key in {} (keep it off the nodes); public key in {} (nodes: --token-root)",
                out.display(),
                woof_node::auth::token::pub_path(&out).display()
            );
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            root_key,
            topics,
            ops,
            expires,
        }) => {
            use woof_node::auth::token;
            let root = token::load_private(&root_key)?;
            let grant = token::Grant {
                topics: token::parse_topics(&topics)?,
                ops: token::parse_ops(&ops)?,
                expires_in: token::parse_lifetime(&expires)?,
            };
            let made = token::create(&root, &grant)?;
            println!("{made}");
            eprintln!("id (to revoke it): {}", token::token_id(&made)?);
            Ok(())
        }
        Command::Token(TokenCommand::Attenuate {
            token: text,
            topics,
            ops,
            expires,
        }) => {
            use woof_node::auth::token;
            let narrowing = token::Narrowing {
                topics: if topics.is_empty() {
                    None
                } else {
                    Some(token::parse_topics(&topics)?)
                },
                ops: ops.as_deref().map(token::parse_ops).transpose()?,
                expires_in: expires.as_deref().map(token::parse_lifetime).transpose()?,
            };
            let made = token::attenuate(&text, &narrowing)?;
            println!("{made}");
            let (ids, _) = token::inspect(&made)?;
            if let Some(own) = ids.last() {
                eprintln!("id of this attenuation (to revoke it alone): {own}");
            }
            Ok(())
        }
        Command::Token(TokenCommand::Inspect { token: text }) => {
            let (ids, source) = woof_node::auth::token::inspect(&text)?;
            for (i, id) in ids.iter().enumerate() {
                println!("id {i}: {id}");
            }
            print!("{source}");
            Ok(())
        }
        Command::Cluster(ClusterCommand::Keygen) => {
            print!("{}", woof_overlay::ClusterKey::generate().to_file_text());
            Ok(())
        }
        Command::Cluster(ClusterCommand::Up {
            nodes,
            tiers,
            dir,
            base_port,
            secure,
        }) => {
            init_tracing("warn");
            let tiers = local_cluster::parse_tiers(&tiers, nodes)?;
            let woof = std::env::current_exe()?;
            let (nodes, secured) =
                local_cluster::up(&woof, &dir, &tiers, base_port, secure).await?;
            for n in &nodes {
                println!(
                    "{:<8} {:<6} gRPC {:<24} overlay {:<28} pid {}",
                    n.name, n.tier, n.grpc, n.overlay, n.pid
                );
            }
            println!(
                "cluster up: {} nodes, all alive; logs in {}/node-*/node.log",
                nodes.len(),
                dir.display()
            );
            println!("reach it with: export WOOF_SERVER={}", nodes[0].grpc);
            match &secured {
                None => println!("watch it at:   {}", nodes[0].dashboard),
                Some(s) => {
                    println!(
                        "               export WOOF_CA={} WOOF_TOKEN=$(cat {})",
                        s.ca.display(),
                        s.token_file.display()
                    );
                    println!(
                        "               (TLS by the CA in {}; {} may do everything for 30 days: \
                         narrow it with `woof token attenuate`, mint others with --root-key {})",
                        s.ca.display(),
                        s.token_file.display(),
                        dir.join("root.key").display()
                    );
                    // The fragment stays in the browser: the token is not
                    // sent in the request line, nor logged.
                    println!("watch it at:   {}#token={}", nodes[0].dashboard, s.token);
                    println!(
                        "               (the browser must trust {} to open it without a warning)",
                        s.ca.display()
                    );
                }
            }
            println!("stop it with:  woof cluster down --dir {}", dir.display());
            Ok(())
        }
        Command::Cluster(ClusterCommand::Down { dir }) => {
            let nodes = local_cluster::down(&dir)?;
            println!(
                "stopped {} nodes; their data stays in {}",
                nodes.len(),
                dir.display()
            );
            Ok(())
        }
        Command::Handler(cli::HandlerCommand::Builtins) => {
            for (name, what) in woof_node::handlers::native::BUILTINS {
                println!("{name}\t{what}");
            }
            Ok(())
        }
        Command::Device(cli::DeviceCommand::Sim(args)) => {
            init_tracing("warn");
            let config = args.config()?;
            let who = if args.devices > 1 {
                format!(
                    "{} devices {}-1 .. {0}-{}",
                    args.devices, config.id, args.devices
                )
            } else {
                format!("device {}", config.id)
            };
            let what = match &config.offload {
                Some(o) => format!(
                    "invoking {} (locally: {}) {} times",
                    o.handler, o.builtin, config.count
                ),
                None => format!(
                    "appending {} readings each to {}",
                    config.count, config.topic
                ),
            };
            println!(
                "{who} {what} at {}/s through {} gateway(s), losing {:.0}% of frames each way",
                config.rate,
                config.gateways.len(),
                config.loss * 100.0
            );
            let report =
                woof_node::devices::simulator::run_fleet(config, args.devices.max(1)).await?;
            if cli.json {
                println!("{}", report.summary());
            } else if let [(_, one)] = report.devices.as_slice() {
                println!("{one}");
            } else {
                println!("{report}");
            }
            match report.shortfall() {
                Some(why) => anyhow::bail!("{why}"),
                None => Ok(()),
            }
        }
        Command::Demo => {
            init_tracing("warn,libp2p_kad=error,openraft=off");
            woof_node::demo::run().await?;
            Ok(())
        }
        command => {
            init_tracing("warn");
            let mut out = Output::stdout(cli.json);
            let options = ClientOptions::from_cli(cli.ca.as_deref(), cli.token.as_deref())?;
            cli::run_client(&cli.server, &options, command, &mut out).await?;
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when it is first awaited: a node announces that it serves only
/// after, so a signal sent as soon as it says so stops it cleanly instead of
/// killing it (seen under load: SIGTERM between the announcement and the
/// first poll took the default action).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn received(name: &str, signal: std::io::Result<Signal>) {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch for {name} ({e}); the other signal still stops the node"
                );
                std::future::pending::<()>().await;
            }
        }
    }
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        tokio::select! {
            _ = received("SIGTERM", term) => {}
            _ = received("SIGINT", interrupt) => {}
        }
    }
}

fn init_tracing(default: &str) {
    init_logs(default, LogFormat::Text);
}

/// Logs to standard error, filtered by `WOOF_LOG` (else `default`), as text
/// or as one JSON object per line; in JSON, the fields of the spans an event
/// is in (a gRPC request's `rpc`, `topic` and `peer`) are in its `spans`.
fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WOOF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            // Colours only for a person at a terminal, not in log files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}
