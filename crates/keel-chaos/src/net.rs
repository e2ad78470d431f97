//! Where the nodes live on the network, and the partitions.
//!
//! Namespaces mode (the default; needs root, iproute2 and nftables): node
//! `i` (1-based) runs in network namespace `keelchaos-n<i>` with address
//! `10.213.0.<i>/24` on a veth whose other end is enslaved to the bridge
//! `kcbr0` (address `10.213.0.254`) in the runner's namespace. The runner's
//! clients reach every node through the bridge and are never cut off.
//! Each namespace has an nftables table `inet keelchaos` with an input
//! chain; a cut `from -> to` is a rule in `to`'s chain dropping packets
//! whose source is `from`'s address. A symmetric partition is both
//! directions; a one-way cut is one.
//!
//! Loopback mode (`--no-network-faults`): every node on 127.0.0.1 with its
//! own ports; partitions are not available.
//!
//! Leftovers of a crashed run (namespaces named `keelchaos-*`, the bridge,
//! processes still inside those namespaces) are removed at start, and
//! everything is removed when `Net` is dropped (also on Ctrl-C: the runner
//! drops it before exiting).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

pub const PREFIX: &str = "keelchaos";
const BRIDGE: &str = "kcbr0";
const SUBNET: &str = "10.213.0";
const CLIENT_PORT: u16 = 7070;
const PEER_PORT: u16 = 7071;

/// A directed cut: packets from node `.0` to node `.1` are dropped (ids
/// are 1-based).
pub type Cut = (usize, usize);

pub struct Net {
    n: usize,
    mode: Mode,
    _lock: Option<RunLock>,
}

enum Mode {
    Namespaces { ip: PathBuf, nft: PathBuf },
    Loopback { ports: Vec<(u16, u16)> },
}

fn find_tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ns_name(i: usize) -> String {
    format!("{PREFIX}-n{i}")
}

/// Removes what a previous run may have left: processes in our namespaces
/// (SIGKILL), the namespaces, the bridge. Errors are ignored: there may be
/// nothing to remove.
pub fn remove_leftovers(ip: &Path) {
    let Ok(list) = run(Command::new(ip).args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !name.starts_with(&format!("{PREFIX}-")) {
            continue;
        }
        if let Ok(pids) = run(Command::new(ip).args(["netns", "pids", name])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) with a pid read from `ip netns pids`; no
                // memory is involved.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = run(Command::new(ip).args(["netns", "del", name]));
    }
    let _ = run(Command::new(ip).args(["link", "del", BRIDGE]));
    // A namespace outlives `netns del` while a process still holds it, and
    // its veth pair with it: remove our veth ends explicitly.
    if let Ok(links) = run(Command::new(ip).args(["-o", "link", "show"])) {
        for line in links.lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            let ours = ["kcv", "kcp"].iter().any(|p| {
                name.strip_prefix(p)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
            if ours {
                let _ = run(Command::new(ip).args(["link", "del", name]));
            }
        }
    }
}

/// Held for the whole run: one run at a time owns the test network.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

/// Takes the machine-wide lock of the test network (in the temp dir).
pub fn lock_network() -> Result<RunLock, Error> {
    let path = std::env::temp_dir().join(format!("{PREFIX}.lock"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::Setup(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(RunLock(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Setup(format!(
            "another keel-chaos run owns the test network (lock {}); wait for it or stop it",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::Setup(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

impl Net {
    /// Every node on 127.0.0.1 with its own ports; no partitions.
    pub fn loopback(n: usize) -> Result<Net, Error> {
        let mut ls = Vec::new();
        for _ in 0..2 * n {
            ls.push(
                std::net::TcpListener::bind("127.0.0.1:0")
                    .map_err(|e| Error::Setup(format!("cannot find a free port: {e}")))?,
            );
        }
        let mut ports = Vec::new();
        for pair in ls.chunks(2) {
            let p = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
            ports.push((p(&pair[0]), p(&pair[1])));
        }
        Ok(Net {
            n,
            mode: Mode::Loopback { ports },
            _lock: None,
        })
    }

    /// Namespaces, veths and a bridge, and an nftables table per namespace.
    /// Fails with what is missing and what to do about it.
    pub fn namespaces(n: usize) -> Result<Net, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Setup(
                "network faults need root (network namespaces and nftables); \
                 run as root, or pass --no-network-faults to run without partitions"
                    .into(),
            ));
        }
        let ip = find_tool("ip").ok_or_else(|| {
            Error::Setup(
                "iproute2's `ip` is not installed (apt-get install -y iproute2), \
                 or pass --no-network-faults"
                    .into(),
            )
        })?;
        let nft = find_tool("nft").ok_or_else(|| {
            Error::Setup(
                "nftables' `nft` is not installed (apt-get install -y nftables), \
                 or pass --no-network-faults"
                    .into(),
            )
        })?;
        let lock = lock_network()?;
        remove_leftovers(&ip);
        let net = Net {
            n,
            mode: Mode::Namespaces {
                ip: ip.clone(),
                nft: nft.clone(),
            },
            _lock: Some(lock),
        };
        // From here on, dropping `net` removes whatever was made.
        let setup = |cmd: &mut Command| {
            run(cmd).map_err(|e| {
                Error::Setup(format!(
                    "setting up the test network failed: {e}; \
                     is this a container without CAP_NET_ADMIN? \
                     (--no-network-faults runs without partitions)"
                ))
            })
        };
        setup(Command::new(&ip).args(["link", "add", BRIDGE, "type", "bridge"]))?;
        setup(Command::new(&ip).args(["addr", "add", &format!("{SUBNET}.254/24"), "dev", BRIDGE]))?;
        setup(Command::new(&ip).args(["link", "set", BRIDGE, "up"]))?;
        for i in 1..=n {
            let ns = ns_name(i);
            let host = format!("kcv{i}");
            let peer = format!("kcp{i}");
            setup(Command::new(&ip).args(["netns", "add", &ns]))?;
            setup(
                Command::new(&ip)
                    .args(["link", "add", &host, "type", "veth", "peer", "name", &peer]),
            )?;
            setup(Command::new(&ip).args(["link", "set", &peer, "netns", &ns]))?;
            setup(Command::new(&ip).args(["link", "set", &host, "master", BRIDGE]))?;
            setup(Command::new(&ip).args(["link", "set", &host, "up"]))?;
            setup(Command::new(&ip).args(["-n", &ns, "link", "set", "lo", "up"]))?;
            setup(Command::new(&ip).args([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{i}/24"),
                "dev",
                &peer,
            ]))?;
            setup(Command::new(&ip).args(["-n", &ns, "link", "set", &peer, "up"]))?;
            net.nft_script(
                i,
                &format!(
                    "add table inet {PREFIX}\n\
                     add chain inet {PREFIX} input {{ type filter hook input priority 0; policy accept; }}\n"
                ),
            )
            .map_err(|e| {
                Error::Setup(format!(
                    "nftables does not work in a network namespace here: {e}; \
                     (missing nf_tables kernel support?) pass --no-network-faults to run without partitions"
                ))
            })?;
        }
        Ok(net)
    }

    fn nft_script(&self, i: usize, script: &str) -> Result<(), String> {
        let Mode::Namespaces { ip, nft } = &self.mode else {
            return Ok(());
        };
        let mut child = Command::new(ip)
            .args(["netns", "exec", &ns_name(i)])
            .arg(nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing to nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft in {}: {}",
                ns_name(i),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn partitions_supported(&self) -> bool {
        matches!(self.mode, Mode::Namespaces { .. })
    }

    pub fn nodes(&self) -> usize {
        self.n
    }

    /// Node `i`'s client API address.
    pub fn client_addr(&self, i: usize) -> String {
        match &self.mode {
            Mode::Namespaces { .. } => format!("{SUBNET}.{i}:{CLIENT_PORT}"),
            Mode::Loopback { ports } => format!("127.0.0.1:{}", ports[i - 1].0),
        }
    }

    /// Node `i`'s peer address.
    pub fn peer_addr(&self, i: usize) -> String {
        match &self.mode {
            Mode::Namespaces { .. } => format!("{SUBNET}.{i}:{PEER_PORT}"),
            Mode::Loopback { ports } => format!("127.0.0.1:{}", ports[i - 1].1),
        }
    }

    /// A command that runs `program` where node `i` lives.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        match &self.mode {
            Mode::Namespaces { ip, .. } => {
                // `ip netns exec` execs the program after entering the
                // namespace: the child's pid is the program's.
                let mut c = Command::new(ip);
                c.args(["netns", "exec", &ns_name(i)]).arg(program);
                c
            }
            Mode::Loopback { .. } => Command::new(program),
        }
    }

    /// Replaces the current cuts with `cuts` (empty: heal).
    pub fn apply(&self, cuts: &BTreeSet<Cut>) -> Result<(), Error> {
        if !self.partitions_supported() {
            return if cuts.is_empty() {
                Ok(())
            } else {
                Err(Error::Setup(
                    "partitions need network namespaces (not with --no-network-faults)".into(),
                ))
            };
        }
        for to in 1..=self.n {
            let mut script = format!("flush chain inet {PREFIX} input\n");
            for &(from, _) in cuts.iter().filter(|c| c.1 == to) {
                script.push_str(&format!(
                    "add rule inet {PREFIX} input ip saddr {SUBNET}.{from} drop\n"
                ));
            }
            self.nft_script(to, &script)
                .map_err(|e| Error::Fault(format!("applying a partition: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Mode::Namespaces { ip, .. } = &self.mode {
            remove_leftovers(ip);
        }
    }
}
