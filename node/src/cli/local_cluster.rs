//! `woof cluster up` and `woof cluster down`: a cluster of `woof node`
//! processes on this machine's loopback, for trying woof out and for tests.
//!
//! `up` writes everything under `--dir`: the cluster key, one data directory
//! and log per node, and `cluster.json` (what `down` reads). The nodes run in
//! their own process group, so they outlive the command that started them.
//! With `--secure` it also makes a CA and node certificates (`pki/`), a
//! root key (`root.key`, `root.key.pub`) and a token for everything
//! (`admin.token`), and the nodes serve TLS and require tokens.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use woof_overlay::{ClusterKey, Tier};

use crate::error::{Error, Result};

/// The most nodes `up` starts.
pub const NODES_MAX: usize = 32;
const STATE_FILE: &str = "cluster.json";
/// Node i's ports: gRPC at the base port + i, its dashboard at + 50 + i,
/// its overlay at + 100 + i.
const DASHBOARD_OFFSET: usize = 50;

/// One node of a local cluster, as `cluster.json` records it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LocalNode {
    pub name: String,
    pub tier: String,
    pub pid: u32,
    pub grpc: String,
    pub overlay: String,
    /// Its web dashboard (`http://127.0.0.1:PORT/`); empty in a
    /// `cluster.json` written before nodes had one.
    #[serde(default)]
    pub dashboard: String,
}

/// Parses `edge:2,cloud:3` into one tier per node; empty means all `edge`.
pub fn parse_tiers(spec: &str, nodes: usize) -> Result<Vec<Tier>> {
    if nodes == 0 || nodes > NODES_MAX {
        return Err(Error::Usage(format!(
            "--nodes must be 1 to {NODES_MAX}, not {nodes}"
        )));
    }
    if spec.is_empty() {
        return Ok(vec![Tier::Edge; nodes]);
    }
    let mut tiers = Vec::new();
    for part in spec.split(',') {
        let (tier, count) = part.split_once(':').ok_or_else(|| {
            Error::Usage(format!(
                "--tiers is TIER:COUNT,..., such as edge:2,cloud:3; not {part:?}"
            ))
        })?;
        let tier: Tier = tier.parse()?;
        let count: usize = count
            .parse()
            .map_err(|_| Error::Usage(format!("{count:?} in --tiers is not a count")))?;
        if tiers.len() + count > NODES_MAX {
            return Err(Error::Usage(format!(
                "--tiers adds up to more than {NODES_MAX}"
            )));
        }
        tiers.extend(std::iter::repeat_n(tier, count));
    }
    if tiers.len() != nodes {
        return Err(Error::Usage(format!(
            "--tiers adds up to {} nodes but --nodes is {nodes}",
            tiers.len()
        )));
    }
    Ok(tiers)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// What `up --secure` made for the clients: the CA to trust and a token
/// that may do everything.
#[derive(Debug)]
pub struct Secured {
    pub ca: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
    /// The nodes' flags.
    args: Vec<std::ffi::OsString>,
    /// Node i's certificate and key.
    certs: Vec<(PathBuf, PathBuf)>,
}

/// How long `up --secure`'s admin token lasts.
const ADMIN_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// Makes the CA, the node certificates, the root key and the admin token
/// for `nodes` nodes in `dir`.
fn secure(dir: &Path, nodes: usize) -> Result<Secured> {
    use crate::auth::token;
    let names: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
    let written = crate::auth::tls::make_certs(&dir.join("pki"), &names, &[])?;
    // A directory brought up before (and taken down) keeps its root key,
    // so that the tokens made from it still work; the rest is made again.
    let root_path = dir.join("root.key");
    if !root_path.exists() {
        token::keygen_to(&root_path)?;
    }
    let root = token::load_private(&root_path)?;
    let admin = token::create(
        &root,
        &token::Grant {
            topics: token::parse_topics(&["**".into()])?,
            ops: crate::auth::Op::ALL.to_vec(),
            expires_in: ADMIN_TOKEN_LIFETIME,
        },
    )?;
    let token_file = dir.join("admin.token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token_file)
            .map_err(io(format!("writing {}", token_file.display())))?;
        file.write_all(format!("{admin}\n").as_bytes())
            .map_err(io(format!("writing {}", token_file.display())))?;
    }
    let args = vec![
        "--ca".into(),
        written.ca.clone().into_os_string(),
        "--require-token".into(),
        "--token-root".into(),
        token::pub_path(&root_path).into_os_string(),
    ];
    Ok(Secured {
        ca: written.ca,
        token_file,
        token: admin,
        args,
        certs: written.nodes.into_iter().map(|(_, c, k)| (c, k)).collect(),
    })
}

/// Starts the nodes and waits until every one sees all the others alive;
/// with `secured`, over TLS and requiring tokens.
pub async fn up(
    woof: &Path,
    dir: &Path,
    tiers: &[Tier],
    base_port: u16,
    secured: bool,
) -> Result<(Vec<LocalNode>, Option<Secured>)> {
    if dir.join(STATE_FILE).exists() {
        return Err(Error::Usage(format!(
            "{} already holds a cluster; `woof cluster down --dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    if base_port as usize + 100 + tiers.len() > u16::MAX as usize {
        return Err(Error::Usage(format!(
            "--base-port {base_port} leaves no room for the ports"
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let key_path = dir.join("cluster.key");
    std::fs::write(&key_path, ClusterKey::generate().to_file_text())
        .map_err(io(format!("writing {}", key_path.display())))?;

    let secured = secured.then(|| secure(dir, tiers.len())).transpose()?;

    let mut nodes = Vec::new();
    let result = start_all(
        woof,
        dir,
        tiers,
        base_port,
        &key_path,
        secured.as_ref(),
        &mut nodes,
    )
    .await;
    // Record what was started even on failure, so `down` can stop it.
    let state = serde_json::to_string_pretty(&nodes).expect("serialisable");
    std::fs::write(dir.join(STATE_FILE), state)
        .map_err(io(format!("writing {}", dir.join(STATE_FILE).display())))?;
    result?;
    Ok((nodes, secured))
}

async fn start_all(
    woof: &Path,
    dir: &Path,
    tiers: &[Tier],
    base_port: u16,
    key_path: &Path,
    secured: Option<&Secured>,
    nodes: &mut Vec<LocalNode>,
) -> Result<()> {
    let options = match secured {
        Some(s) => super::ClientOptions::from_cli(Some(s.ca.as_path()), Some(&s.token))?,
        None => super::ClientOptions::default(),
    };
    let scheme = if secured.is_some() { "https" } else { "http" };
    for (i, tier) in tiers.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let data = dir.join(&name);
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let grpc = format!("127.0.0.1:{}", base_port as usize + i);
        let overlay = format!("/ip4/127.0.0.1/tcp/{}", base_port as usize + 100 + i);
        let http = format!("127.0.0.1:{}", base_port as usize + DASHBOARD_OFFSET + i);
        let log_path = data.join("node.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let mut command = Command::new(woof);
        command
            .args(["node", "start", "--data-dir"])
            .arg(&data)
            .args([
                "--grpc-listen",
                &grpc,
                "--listen",
                &overlay,
                "--http-listen",
                &http,
                "--cluster-key",
            ])
            .arg(key_path)
            .args([
                "--tier",
                &tier.to_string(),
                "--attr",
                &format!("name={name}"),
            ]);
        if let Some(first) = nodes.first() {
            command.args(["--join", &first.overlay]);
        }
        if let Some(s) = secured {
            let (cert, key) = &s.certs[i];
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .args(&s.args);
        }
        use std::os::unix::process::CommandExt;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("log file".into()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", woof.display())))?;
        nodes.push(LocalNode {
            name: name.clone(),
            tier: tier.to_string(),
            pid: child.id(),
            grpc: format!("{scheme}://{grpc}"),
            overlay: overlay.clone(),
            dashboard: format!("{scheme}://{http}/"),
        });
        wait_serving(&nodes[i], &log_path, &options).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in nodes.iter() {
        loop {
            let alive = alive_count(&node.grpc, &options).await;
            if alive == nodes.len() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Usage(format!(
                    "{} sees {alive} of {} nodes alive after 30 s; see its log in {}",
                    node.name,
                    nodes.len(),
                    dir.join(&node.name).join("node.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn alive_count(url: &str, options: &super::ClientOptions) -> usize {
    let Ok(mut client) = super::connect_with(url, options).await else {
        return 0;
    };
    client
        .cluster_status(woof_proto::v1::ClusterStatusRequest {})
        .await
        .map(|r| {
            r.into_inner()
                .nodes
                .iter()
                .filter(|n| n.state == "alive")
                .count()
        })
        .unwrap_or(0)
}

/// Waits until a node answers gRPC, or explains from its log why not.
async fn wait_serving(node: &LocalNode, log: &Path, options: &super::ClientOptions) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if super::connect_with(&node.grpc, options).await.is_ok() {
            return Ok(());
        }
        if !is_running(node.pid) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text.lines().last().unwrap_or("(empty log)");
            return Err(Error::Usage(format!("{} exited: {last}", node.name)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Usage(format!(
        "{} did not serve gRPC within 30 s; see {}",
        node.name,
        log.display()
    )))
}

fn is_running(pid: u32) -> bool {
    // Signal 0 checks that the process exists without touching it. A zombie
    // (exited, not yet reaped) counts as gone.
    // SAFETY: kill(2) with signal 0 only checks the pid; no memory is involved.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Stops every node `up` started in `dir`: SIGTERM, then SIGKILL after 10 s.
/// The data stays.
pub fn down(dir: &Path) -> Result<Vec<LocalNode>> {
    let state_path: PathBuf = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        Error::Usage(format!(
            "no cluster in {} ({}: {e})",
            dir.display(),
            state_path.display()
        ))
    })?;
    let nodes: Vec<LocalNode> = serde_json::from_str(&text)
        .map_err(|e| Error::Usage(format!("{} is damaged: {e}", state_path.display())))?;
    for node in &nodes {
        if is_running(node.pid) {
            // SAFETY: kill(2) on a pid this directory's `up` started.
            unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in &nodes {
        while is_running(node.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_running(node.pid) {
            // SAFETY: as above.
            unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    std::fs::remove_file(&state_path).map_err(io(format!("removing {}", state_path.display())))?;
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_add_up() {
        assert_eq!(parse_tiers("edge:2,cloud:3", 5).unwrap().len(), 5);
        assert_eq!(parse_tiers("", 3).unwrap(), vec![Tier::Edge; 3]);
        for (spec, n) in [
            ("edge:2", 3),
            ("fog:3", 3),
            ("edge", 1),
            ("edge:x", 1),
            ("", 0),
            ("", 33),
        ] {
            assert!(parse_tiers(spec, n).is_err(), "{spec} {n}");
        }
    }
}
