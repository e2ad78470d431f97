//! The kv example (`examples/kv.rs`) as three real processes: concurrent
//! writers that follow redirects, the leader killed with SIGKILL under
//! load, a new leader, the killed node restarted; then every acknowledged
//! PUT must read back with its value through every node.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The newest modification time of the files under `path`.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| newest(&e.ok()?.path()))
        .max()
}

/// The example binary: built by `cargo test` next to the test executable's
/// directory (`target/<profile>/examples/kv`); built now when it is missing
/// or older than the example or the library's sources (`cargo test --test
/// kv_example` alone builds no examples).
fn kv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let bin = profile_dir
        .join("examples")
        .join(format!("kv{}", std::env::consts::EXE_SUFFIX));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [manifest.join("src"), manifest.join("examples/kv.rs")];
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some() && sources.iter().all(|s| newest(s) <= built) {
        return bin;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "keel-node",
            "--example",
            "kv",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("target/<profile> has a parent"))
        .current_dir(manifest)
        .status()
        .expect("run cargo build --example kv");
    assert!(status.success(), "cargo build --example kv failed");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// One kv process; killed when dropped.
struct Kv {
    id: u64,
    dir: PathBuf,
    peer: String,
    listen: String,
    peers: String,
    child: Option<Child>,
}

impl Kv {
    fn start(&mut self, bin: &Path) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("open the node's log file");
        let child = Command::new(bin)
            .args(["--id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--peer", &self.peer, "--listen", &self.listen])
            .args(["--peers", &self.peers])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the kv example");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the node"); // Child::kill is SIGKILL
            c.wait().expect("reap the node");
        }
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client connection that answers one line per request.
struct Conn {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            addr: addr.to_string(),
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn send(&mut self, lines: &[String]) -> std::io::Result<Vec<String>> {
        let mut all = String::new();
        for l in lines {
            all.push_str(l);
            all.push('\n');
        }
        self.writer.write_all(all.as_bytes())?;
        let mut replies = Vec::with_capacity(lines.len());
        for _ in lines {
            let mut r = String::new();
            if self.reader.read_line(&mut r)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            replies.push(r.trim_end().to_string());
        }
        Ok(replies)
    }
}

#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    offset: u64,
    by: String,
    at: Instant,
}

/// Sends `line` (a PUT or DEL) until a node acknowledges it, following
/// redirects and moving on from nodes that fail; None once `give_up`.
fn until_acked(
    addrs: &[String],
    start: usize,
    line: &str,
    give_up: &dyn Fn() -> bool,
) -> Option<(u64, String)> {
    let mut conn: Option<Conn> = None;
    let mut target = addrs[start % addrs.len()].clone();
    let mut next = start;
    loop {
        if give_up() {
            return None;
        }
        if conn.as_ref().is_none_or(|c| c.addr != target) {
            conn = Conn::open(&target).ok();
        }
        let reply = match conn.as_mut().map(|c| c.send(&[line.to_string()])) {
            Some(Ok(mut r)) => r.remove(0),
            _ => String::from("ERR connection failed"),
        };
        if let Some(off) = reply.strip_prefix("OK ") {
            let off = off.parse().unwrap_or_else(|_| panic!("bad ack `{reply}`"));
            return Some((off, target));
        } else if let Some(to) = reply.strip_prefix("REDIRECT ") {
            assert!(
                addrs.iter().any(|a| a == to),
                "redirect to an unknown address: {reply}"
            );
            target = to.to_string();
            thread::sleep(Duration::from_millis(5));
        } else {
            assert!(
                reply.starts_with("ERR "),
                "unexpected reply to `{line}`: {reply}"
            );
            conn = None;
            next += 1;
            target = addrs[next % addrs.len()].clone();
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn count_since(acks: &Mutex<Vec<Ack>>, since: Instant, not_by: Option<&str>) -> usize {
    let acks = acks.lock().unwrap();
    acks.iter()
        .filter(|a| a.at > since && not_by.is_none_or(|n| a.by != n))
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `GET` every key through `addr`, pipelined, retrying errors (a node
/// still catching up, or electing) until `deadline`.
fn read_all(addr: &str, keys: &[String], deadline: Instant) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    let mut todo: Vec<String> = keys.to_vec();
    while !todo.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{addr} still fails GETs of {} keys, e.g. {}",
            todo.len(),
            todo[0]
        );
        let mut retry = Vec::new();
        match Conn::open(addr) {
            Ok(mut c) => {
                for chunk in todo.chunks(200) {
                    let lines: Vec<String> = chunk.iter().map(|k| format!("GET {k}")).collect();
                    match c.send(&lines) {
                        Ok(replies) => {
                            for (k, r) in chunk.iter().zip(replies) {
                                if r.starts_with("ERR ") {
                                    retry.push(k.clone());
                                } else {
                                    got.insert(k.clone(), r);
                                }
                            }
                        }
                        Err(_) => retry.extend(chunk.iter().cloned()),
                    }
                }
            }
            Err(_) => retry = todo.clone(),
        }
        if !retry.is_empty() {
            thread::sleep(Duration::from_millis(100));
        }
        todo = retry;
    }
    got
}

#[test]
fn three_kv_processes_keep_every_acknowledged_put_across_a_leader_kill_and_restart() {
    let bin = kv_binary();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = std::env::temp_dir().join(format!("keel-kv-example-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let ports = free_ports(6);
    let peers = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[2 * i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Kv> = (0..3)
        .map(|i| Kv {
            id: i as u64 + 1,
            dir: root.join(format!("n{}", i + 1)),
            peer: format!("127.0.0.1:{}", ports[2 * i]),
            listen: format!("127.0.0.1:{}", ports[2 * i + 1]),
            peers: peers.clone(),
            child: None,
        })
        .collect();
    for n in &mut nodes {
        n.start(&bin);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.listen.clone()).collect();
    let logs = format!("node logs: {}/n*.log", root.display());

    // The cluster elects a leader and takes a first write.
    let t0 = Instant::now();
    let first = until_acked(&addrs, 0, "PUT first write", &|| {
        t0.elapsed() > Duration::from_secs(30)
    });
    assert!(first.is_some(), "no write acknowledged within 30 s; {logs}");

    // Writers: unique keys, values with spaces; a PUT whose outcome is
    // unknown (an error, a dropped connection) is retried as it is.
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addrs, acks, stop) = (addrs.clone(), acks.clone(), stop.clone());
            thread::spawn(move || {
                for seq in 0.. {
                    let (key, value) =
                        (format!("w{w}-{seq}"), format!("value {seq} of writer {w}"));
                    let put = format!("PUT {key} {value}");
                    let Some((offset, by)) =
                        until_acked(&addrs, w, &put, &|| stop.load(Ordering::Relaxed))
                    else {
                        return;
                    };
                    acks.lock().unwrap().push(Ack {
                        key,
                        value,
                        offset,
                        by,
                        at: Instant::now(),
                    });
                }
            })
        })
        .collect();

    let start = Instant::now();
    wait_for("500 acknowledged PUTs", Duration::from_secs(60), || {
        count_since(&acks, start, None) >= 500
    });

    // Kill -9 the node that acknowledged the latest PUT: the leader.
    let leader = acks.lock().unwrap().last().unwrap().by.clone();
    let victim = nodes.iter().position(|n| n.listen == leader).unwrap();
    nodes[victim].kill();
    let killed = Instant::now();
    let before_kill = count_since(&acks, start, None);

    // Writes go on through a new leader.
    wait_for(
        "300 PUTs acknowledged by a new leader",
        Duration::from_secs(60),
        || count_since(&acks, killed, Some(&leader)) >= 300,
    );
    let failover = killed.elapsed();

    // The killed node comes back (same data directory) and catches up.
    nodes[victim].start(&bin);
    let restarted = Instant::now();
    wait_for(
        "300 more acknowledged PUTs",
        Duration::from_secs(60),
        || count_since(&acks, restarted, None) >= 300,
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer panicked");
    }
    let acks = acks.lock().unwrap().clone();
    eprintln!(
        "{} PUTs acknowledged ({before_kill} before the kill); writes resumed {:?} after it",
        acks.len(),
        failover
    );

    // Acknowledged PUTs have distinct offsets, and none came from the
    // killed node while it was down.
    let offsets: BTreeSet<u64> = acks.iter().map(|a| a.offset).collect();
    assert_eq!(
        offsets.len(),
        acks.len(),
        "two acknowledged PUTs share an offset"
    );
    assert!(
        acks.iter()
            .all(|a| !(a.by == leader && a.at > killed && a.at < restarted)),
        "a killed node acknowledged a PUT"
    );

    // A DEL, sent to a node that may be a follower (it redirects).
    let deleted = acks[0].key.clone();
    let del = until_acked(&addrs, victim + 1, &format!("DEL {deleted}"), &|| false);
    assert!(del.is_some());

    // Every node, the restarted one included, reads every acknowledged PUT.
    let keys: Vec<String> = acks.iter().map(|a| a.key.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &addrs {
        let got = read_all(addr, &keys, deadline);
        for a in &acks {
            let want = if a.key == deleted {
                "NONE".to_string()
            } else {
                format!("VALUE {}", a.value)
            };
            assert_eq!(got[&a.key], want, "GET {} through {addr}; {logs}", a.key);
        }
    }

    // The example snapshots as it says: every node has a snapshot.
    for n in &nodes {
        let snaps = std::fs::read_dir(n.dir.join("groups/0/snapshot"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".snap")
            })
            .count();
        assert!(snaps >= 1, "node {} has no snapshot; {logs}", n.id);
    }
    let log = std::fs::read_to_string(nodes[victim].dir.with_extension("log")).unwrap();
    eprintln!(
        "the restarted node {} caught up {}",
        nodes[victim].id,
        if log.contains("installed a snapshot from the leader") {
            "with a snapshot from the leader"
        } else {
            "from the leader's log"
        }
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}
