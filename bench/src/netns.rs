//! Nodes on a network of their own: each node in its own Linux network
//! namespace, linked to a bridge in the bench's namespace, so that a node
//! can be cut off from the others by taking its link down.
//!
//! [`Net::create`] makes, with `ip` (iproute2, as root):
//! - a bridge `woofb-br` in the bench's namespace, with the address
//!   10.213.7.254/24, through which the bench reaches every host;
//! - per host `i`, a namespace `woofb-ns{i}` with `lo` up and one end of a
//!   veth pair, `woofb-v{i}`, addressed 10.213.7.{i+1}/24; the other end,
//!   `woofb-h{i}`, is a port of the bridge.
//!
//! [`Net::cut`] takes `woofb-h{i}` down from the bench's side: host `i` then
//! reaches nobody (neither the other hosts nor the bench) and nobody
//! reaches it; established connections see no reset, only silence, as with
//! a pulled cable. [`Net::heal`] brings it up again (the bridge forwards at
//! once: no STP, no forwarding delay).
//!
//! Every name starts with `woofb-`: a run removes what an earlier one left
//! behind (one killed before its `Drop` ran), and `Drop` removes everything.
//! So two runs that both use a `Net` must not overlap.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The start of every name made here.
const PREFIX: &str = "woofb-";
const BRIDGE: &str = "woofb-br";
/// The network's first three octets; hosts are .1 to .N, the bridge .254.
const SUBNET: &str = "10.213.7";
const BRIDGE_HOST: u8 = 254;
/// More hosts would collide with the bridge's address.
const HOSTS_MAX: usize = 200;
/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// `hosts` network namespaces on one bridge; removed when dropped.
pub struct Net {
    hosts: usize,
}

impl Net {
    /// Whether namespaces can be made here: as root, with `ip`, one trial
    /// namespace made and removed, and no other interface on the subnet.
    /// The error says why not.
    pub fn available() -> anyhow::Result<()> {
        let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            bail!("network namespaces need root (the effective user is not 0)");
        }
        ip(&["-V"]).context("iproute2's `ip` is needed")?;
        let routes = ip(&["-o", "route", "show", &format!("{SUBNET}.0/24")])?;
        if let Some(other) = routes
            .lines()
            .find(|l| !l.contains(&format!("dev {PREFIX}")))
        {
            bail!("{SUBNET}.0/24 is already routed here: {other}");
        }
        let probe = format!("{PREFIX}probe");
        let _ = ip(&["netns", "del", &probe]);
        ip(&["netns", "add", &probe])?;
        ip(&["netns", "del", &probe])?;
        Ok(())
    }

    /// Makes the bridge and `hosts` namespaces, first removing whatever an
    /// earlier run left.
    pub fn create(hosts: usize) -> anyhow::Result<Self> {
        if hosts == 0 || hosts > HOSTS_MAX {
            bail!("a Net has 1 to {HOSTS_MAX} hosts, not {hosts}");
        }
        remove_all();
        // From here on, dropping `net` removes whatever was made.
        let net = Self { hosts };
        ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{SUBNET}.{BRIDGE_HOST}/24"),
            "dev",
            BRIDGE,
        ])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 0..hosts {
            let (ns, outside, inside) = (namespace(i), outside(i), inside(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns,
            ])?;
            ip(&["link", "set", &outside, "master", BRIDGE, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `i`'s address (10.213.7.{i+1}).
    pub fn addr(&self, i: usize) -> String {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        format!("{SUBNET}.{}", i + 1)
    }

    /// Takes host `i`'s link down: it is cut off from every other host and
    /// from the bench.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        ip(&["link", "set", &outside(i), "down"])?;
        Ok(())
    }

    /// Brings host `i`'s link up again.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        ip(&["link", "set", &outside(i), "up"])?;
        Ok(())
    }

    /// A command that runs `program` in host `i`'s namespace: `ip netns
    /// exec NS program`, which enters the namespace and then execs the
    /// program, so the child's pid is the program's (signals reach it).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(namespace(i)).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_all();
    }
}

fn namespace(i: usize) -> String {
    format!("{PREFIX}ns{i}")
}

/// The bridge's end of host `i`'s veth pair.
fn outside(i: usize) -> String {
    format!("{PREFIX}h{i}")
}

/// The namespace's end of host `i`'s veth pair.
fn inside(i: usize) -> String {
    format!("{PREFIX}v{i}")
}

/// Removes every interface and namespace whose name starts with
/// [`PREFIX`]; problems are printed, not returned (this runs in `Drop`).
/// Links go first: deleting a veth's end deletes both at once, while a
/// namespace's veth goes away only later, in the kernel's own time.
fn remove_all() {
    let warn = |e: anyhow::Error| eprintln!("netns clean-up: {e:#}");
    match ip(&["-o", "link", "show"]) {
        Ok(links) => {
            // Lines read "7: woofb-h0@if2: <...> ...".
            let mut names: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| n.starts_with(PREFIX))
                .collect();
            // The bridge last, once it has no ports.
            names.sort_by_key(|n| *n == BRIDGE);
            for name in names {
                if let Err(e) = ip(&["link", "del", name]) {
                    warn(e);
                }
            }
        }
        Err(e) => warn(e),
    }
    match ip(&["netns", "list"]) {
        Ok(list) => {
            for ns in list
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(PREFIX))
            {
                // A process left in a namespace keeps it alive after `netns
                // del` (without a link now): say which.
                if let Ok(pids) = ip(&["netns", "pids", ns])
                    && !pids.trim().is_empty()
                {
                    eprintln!(
                        "netns clean-up: processes still in {ns}: {}",
                        pids.split_whitespace().collect::<Vec<_>>().join(" ")
                    );
                }
                if let Err(e) = ip(&["netns", "del", ns]) {
                    warn(e);
                }
            }
        }
        Err(e) => warn(e),
    }
}

/// Runs `ip ARGS` for at most [`IP_TIMEOUT`]; its stdout, or an error
/// naming the command and carrying its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let what = format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot run ip"))?;
    // Read both pipes on threads, so that a chatty command never blocks.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + IP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| what.clone())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what}: no answer within {IP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("{what}: {status}: {}", err.trim());
    }
    Ok(out)
}
