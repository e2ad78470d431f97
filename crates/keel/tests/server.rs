//! Integration tests with real `keel server` processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use keel_client::{Client, ClientOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn three_nodes_append_and_get_through_cli_and_client() {
    let c = Cluster::start(3, "cli3");
    let rt = rt();
    let _enter = rt.enter();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap();
    let other = c.nodes.iter().rfind(|n| n.id != leader).unwrap();

    // The quick start, pointed at a follower only: it redirects.
    let o = keel(&[
        "append",
        "-d",
        "Hello World",
        "--endpoints",
        &follower.client_addr,
    ]);
    assert!(o.status.success(), "append failed: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "0");
    let o = keel(&["get", "-i", "0", "--endpoints", &other.client_addr]);
    assert!(o.status.success(), "get failed: {}", stderr(&o));
    assert_eq!(stdout(&o), "Hello World\n");

    // Many concurrent appends through the client library: distinct offsets.
    let client = c.client();
    let offsets = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let off = client.append(format!("rec-{i}")).await.unwrap();
                (off, format!("rec-{i}"))
            }));
        }
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for (o, v) in offsets {
        assert!(seen.insert(o, v).is_none(), "offset {o} given twice");
    }
    assert_eq!(*seen.keys().next().unwrap(), 1);
    assert_eq!(*seen.keys().last().unwrap(), 200);
    let recs = rt.block_on(client.read(0, 201, false)).unwrap();
    assert_eq!(recs.len(), 201);
    for r in &recs[1..] {
        assert_eq!(seen[&r.offset].as_bytes(), &r.data[..]);
    }

    // JSON output, ranges, tail, -f and --count.
    let o = keel(&[
        "get",
        "--from",
        "0",
        "--to",
        "2",
        "--output",
        "json",
        "--endpoints",
        &c.endpoints(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["data"], "Hello World");
    assert_eq!(lines[0]["encoding"], "utf8");
    let o = keel_in(
        &c.root.0,
        &[
            "append",
            "-f",
            "-",
            "--output",
            "json",
            "--endpoints",
            &c.endpoints(),
        ],
        Some("line one\nline two\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"offset\":201}\n{\"offset\":202}\n");
    let o = keel(&[
        "append",
        "-d",
        "x",
        "--count",
        "3",
        "--endpoints",
        &c.endpoints(),
    ]);
    assert_eq!(stdout(&o), "203\n204\n205\n");
    let o = keel(&["tail", "--from", "201", "--endpoints", &other.client_addr]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "line one\nline two\nx\nx\nx\n");

    // Binary data comes back as base64 in JSON.
    rt.block_on(client.append(Bytes::from_static(&[0xff, 0xfe])))
        .unwrap();
    let o = keel(&[
        "get",
        "-i",
        "206",
        "--output",
        "json",
        "--endpoints",
        &c.endpoints(),
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["encoding"], "base64");
    assert_eq!(v["data"], "//4=");

    // Status: every member, one leader.
    let o = keel(&[
        "status",
        "--output",
        "json",
        "--endpoints",
        &follower.client_addr,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1);
    let o = keel(&["status", "--endpoints", &follower.client_addr]);
    assert!(stdout(&o).contains("leader"), "{}", stdout(&o));

    // Transfer leadership and keep working.
    let target = follower.id;
    let o = keel(&[
        "transfer-leader",
        "--to",
        &target.to_string(),
        "--endpoints",
        &c.endpoints(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rt.block_on(c.wait_leader(Duration::from_secs(10))), target);
    let o = keel(&[
        "append",
        "-d",
        "after transfer",
        "--endpoints",
        &c.endpoints(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "207");

    // Metrics.
    let mut s = std::net::TcpStream::connect(&c.nodes[0].metrics_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("keel_applied_index"), "{body}");
    assert!(body.contains("keel_fsync_latency_seconds_bucket"), "{body}");
}

#[test]
fn followers_redirect_with_the_leaders_address() {
    // Also the multi-threaded runtime (the default on this size of machine
    // is one thread).
    let mut c = Cluster::new(3, "redirect", &["--worker-threads", "2"]);
    for n in &mut c.nodes {
        n.start();
    }
    let rt = rt();
    let _enter = rt.enter();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    assert!(c.logs().contains("worker_threads=2"), "{}", c.logs());
    let leader_addr = c.nodes[(leader - 1) as usize].client_addr.clone();
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap();
    rt.block_on(async {
        let mut raw = keel_proto::v1::keel_client::KeelClient::connect(format!(
            "http://{}",
            follower.client_addr
        ))
        .await
        .unwrap();
        let err = raw
            .append(keel_proto::v1::AppendRequest {
                log: 0,
                records: vec![Bytes::from_static(b"x")],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains(&leader_addr), "{}", err.message());
        assert_eq!(
            err.metadata().get("keel-leader").unwrap().to_str().unwrap(),
            leader_addr
        );
        // A linearizable read on a follower is served (confirmed through
        // the leader); nothing was appended by the refused call.
        let err = raw
            .read(keel_proto::v1::ReadRequest {
                start_offset: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
    });
}

#[test]
fn killing_the_leader_loses_no_acknowledged_record() {
    let mut c = Cluster::start(3, "kill");
    let rt = rt();
    let _enter = rt.enter();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Default::default();
    let client = Client::new(ClientOptions {
        endpoints: c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut i = 0u64;
                let mut errors = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v = format!("w{w}-{i}");
                    i += 1;
                    match client.append(v.clone()).await {
                        Ok(off) => {
                            assert!(
                                acked.lock().unwrap().insert(off, v).is_none(),
                                "offset {off} acknowledged twice"
                            );
                        }
                        Err(_) => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let wait_for = |n: usize, within: Duration| {
        let deadline = Instant::now() + within;
        while acked.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} acks",
                acked.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(300, Duration::from_secs(20));
    c.node(leader).kill();
    let before = acked.lock().unwrap().len();
    wait_for(before + 300, Duration::from_secs(30));
    let new_leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    assert_ne!(new_leader, leader);
    c.node(leader).start();
    let now = acked.lock().unwrap().len();
    wait_for(now + 200, Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let max = *acked.keys().last().unwrap();

    // Every node, the restarted one included, catches up and holds every
    // acknowledged record at its offset.
    for n in &c.nodes {
        let one = Client::new(ClientOptions {
            endpoints: vec![n.client_addr.clone()],
            timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let recs = loop {
            let recs = rt.block_on(one.read(0, max + 1, true)).unwrap_or_default();
            if recs.len() as u64 == max + 1 {
                break recs;
            }
            assert!(
                Instant::now() < deadline,
                "node {} has {} of {} records\n{}",
                n.id,
                recs.len(),
                max + 1,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for (off, v) in &acked {
            assert_eq!(
                &recs[*off as usize].data[..],
                v.as_bytes(),
                "node {} offset {off}",
                n.id
            );
        }
    }
}

#[test]
fn errors_are_clear() {
    // Wrong flags: exit code 2 and a message.
    let o = keel(&["append"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("required"), "{}", stderr(&o));
    let o = keel(&["server", "--peers", "1=nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("HOST:PORT"), "{}", stderr(&o));
    let o = keel(&["get", "-i", "zero"]);
    assert_eq!(o.status.code(), Some(2));

    // Unknown endpoints.
    let port = free_ports(1)[0];
    let t0 = Instant::now();
    let o = keel(&[
        "get",
        "-i",
        "0",
        "--endpoints",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach any endpoint"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(10));

    let (mut c, rt) = one_node("errors", &["--max-record-bytes", "1024"]);
    let _enter = rt.enter();
    let ep = c.endpoints();

    // Oversize record.
    let big = "x".repeat(2000);
    let o = keel(&["append", "-d", &big, "--endpoints", &ep]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("1024"), "{}", stderr(&o));

    // Read past the end.
    let o = keel(&["append", "-d", "one", "--endpoints", &ep]);
    assert!(o.status.success());
    let o = keel(&["get", "-i", "5", "--endpoints", &ep]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("past the end"), "{}", stderr(&o));
    assert!(stderr(&o).contains("next offset is 1"), "{}", stderr(&o));

    // A second server on the same data directory fails at once.
    let dir = c.nodes[0].dir.display().to_string();
    let ports = free_ports(3);
    let t0 = Instant::now();
    let o = keel(&[
        "server",
        "--data-dir",
        &dir,
        "--client-addr",
        &format!("127.0.0.1:{}", ports[0]),
        "--peer-addr",
        &format!("127.0.0.1:{}", ports[1]),
        "--metrics-addr",
        "off",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("in use by another keel server"),
        "{}",
        stderr(&o)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    // A data directory of another node id is refused.
    c.nodes[0].kill();
    let o = keel(&[
        "server",
        "--id",
        "2",
        "--data-dir",
        &dir,
        "--peers",
        &format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[1], ports[2]),
        "--client-addr",
        &format!("127.0.0.1:{}", ports[0]),
        "--metrics-addr",
        "off",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("belongs to node 1"), "{}", stderr(&o));
}

/// A single-node cluster that has elected itself, and a runtime for the
/// test's async parts.
fn one_node(name: &str, args: &[&str]) -> (Cluster, tokio::runtime::Runtime) {
    let mut c = Cluster::new(1, name, args);
    c.nodes[0].start();
    let rt = rt();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));
    (c, rt)
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = st
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb << 10
}

#[test]
fn appends_of_too_many_records_are_refused_before_they_are_decoded() {
    let (c, rt) = one_node("limits", &[]);
    let _enter = rt.enter();
    let pid = c.nodes[0].pid();
    let before = peak_rss(pid);
    rt.block_on(async {
        let mut raw = keel_proto::v1::keel_client::KeelClient::connect(format!(
            "http://{}",
            c.nodes[0].client_addr
        ))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
        // Eight million empty records: 16 MB on the wire, a quarter of a
        // gigabyte once decoded.
        let err = raw
            .append(keel_proto::v1::AppendRequest {
                log: 0,
                records: vec![Bytes::new(); 8_000_000],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("at most 100000 per request"),
            "{}",
            err.message()
        );
        assert!(
            err.metadata().get(keel_proto::REFUSED_KEY).is_some(),
            "marked as not worth retrying"
        );
        // Under the record count but over the byte limit once each record's
        // framing counts: 15.8 MB of payload in 99,000 records.
        let err = raw
            .append(keel_proto::v1::AppendRequest {
                log: 0,
                records: vec![Bytes::from(vec![b'r'; 160]); 99_000],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("with their framing"),
            "{}",
            err.message()
        );
        assert!(err.metadata().get(keel_proto::REFUSED_KEY).is_some());
        // Nothing of either was appended, and the node goes on.
        let ok = raw
            .append(keel_proto::v1::AppendRequest {
                log: 0,
                records: vec![Bytes::from_static(b"after")],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.first_offset, 0);
    });
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(
        grown < 128 << 20,
        "the refused requests grew the server's peak memory by {} MiB",
        grown >> 20
    );
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_the_metrics_listener_waits_instead_of_spinning() {
    let (c, rt) = one_node("emfile", &[]);
    let _enter = rt.enter();
    let pid = c.nodes[0].pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let prlimit = |soft: String| {
        let o = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
            .output()
            .expect("run prlimit (util-linux)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let o = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            "--nofile",
            "--output",
            "SOFT",
            "--noheadings",
        ])
        .output()
        .expect("run prlimit (util-linux)");
    let soft = String::from_utf8_lossy(&o.stdout).trim().to_string();
    prlimit((open + 4).to_string());
    // Idle connections: a few are accepted (and held for the 5 s read
    // timeout), then every accept fails with EMFILE.
    let held: Vec<std::net::TcpStream> = (0..24)
        .map(|_| std::net::TcpStream::connect(&c.nodes[0].metrics_addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    // 2 s of a spinning loop is about 200 ticks; an idle node uses a few.
    assert!(used < 40, "the node used {used} ticks of CPU in 2 s");
    drop(held);
    prlimit(soft);
    // It serves metrics again once descriptors are free.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::net::TcpStream::connect(&c.nodes[0].metrics_addr).and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        if let Ok(body) = &got
            && body.contains("keel_")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics after the limit was lifted: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.nodes[0]
            .log()
            .contains("accepting a metrics connection failed"),
        "{}",
        c.nodes[0].log()
    );
}

#[test]
fn one_callers_oversized_record_fails_only_that_caller_in_a_batch() {
    let (c, rt) = one_node("batchbad", &["--max-record-bytes", "1024"]);
    let _enter = rt.enter();
    // A long linger: the eleven appends below travel in one request.
    let cl = Client::new(ClientOptions {
        endpoints: vec![c.nodes[0].client_addr.clone()],
        linger: Duration::from_millis(100),
        ..Default::default()
    })
    .unwrap();
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for i in 0..11 {
            let cl = cl.clone();
            let rec = if i == 5 {
                Bytes::from(vec![b'x'; 2000])
            } else {
                Bytes::from(format!("ok {i}"))
            };
            handles.push(tokio::spawn(async move { cl.append(rec).await }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    let mut offsets = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
            assert!(e.to_string().contains("1024"), "{e}");
        } else {
            offsets.push(*r.as_ref().unwrap_or_else(|e| panic!("append {i}: {e}")));
        }
    }
    offsets.sort();
    assert_eq!(offsets, (0..10).collect::<Vec<u64>>());
}

#[test]
fn requests_and_streams_past_the_nodes_limits_are_refused_at_once() {
    let (c, rt) = one_node("slots", &["--max-requests", "1", "--max-streams", "2"]);
    let _enter = rt.enter();
    let addr = format!("http://{}", c.nodes[0].client_addr);
    rt.block_on(async {
        let raw = keel_proto::v1::keel_client::KeelClient::connect(addr)
            .await
            .unwrap();
        // Fifty appends at once against a limit of one: each holds its
        // place until its fsync, so most of the others are refused.
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let mut raw = raw.clone();
            tasks.push(tokio::spawn(async move {
                raw.append(keel_proto::v1::AppendRequest {
                    log: 0,
                    records: vec![Bytes::from(i.to_string())],
                })
                .await
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                    assert!(e.message().contains("--max-requests"), "{}", e.message());
                    assert!(
                        e.metadata().get(keel_proto::REFUSED_KEY).is_none(),
                        "a passing condition: worth retrying"
                    );
                    refused += 1;
                }
            }
        }
        assert!(ok >= 1 && refused >= 1, "{ok} ok, {refused} refused");

        // Two tails may be open; the third is refused until one closes.
        let tail = |mut raw: keel_proto::v1::keel_client::KeelClient<_>| async move {
            raw.tail(keel_proto::v1::TailRequest {
                log: 0,
                start_offset: 0,
                ..Default::default()
            })
            .await
        };
        let t1 = tail(raw.clone()).await.unwrap().into_inner();
        let _t2 = tail(raw.clone()).await.unwrap().into_inner();
        let e = tail(raw.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--max-streams"), "{}", e.message());
        drop(t1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tail(raw.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                    assert!(
                        Instant::now() < deadline,
                        "the closed tail's place never freed"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

#[test]
fn a_tail_sends_a_large_entry_in_pieces_in_order() {
    let (c, rt) = one_node("bigtail", &[]);
    let _enter = rt.enter();
    let addr = format!("http://{}", c.nodes[0].client_addr);
    rt.block_on(async {
        let mut raw = keel_proto::v1::keel_client::KeelClient::connect(addr)
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
        // 3,000 records of 2 KiB in one append: entries of up to 4 MiB,
        // each larger than a tail response.
        let recs: Vec<Bytes> = (0..3000u32)
            .map(|i| {
                let mut v = format!("{i:06}").into_bytes();
                v.resize(2048, b'.');
                Bytes::from(v)
            })
            .collect();
        raw.append(keel_proto::v1::AppendRequest {
            log: 0,
            records: recs.clone(),
        })
        .await
        .unwrap();
        // An acknowledged append is served once the applied mark covers it:
        // a linearizable read waits for that, a tail that does not follow
        // does not.
        raw.read(keel_proto::v1::ReadRequest {
            log: 0,
            start_offset: 2999,
            ..Default::default()
        })
        .await
        .unwrap();
        // Starting in the middle of the first entry.
        let mut stream = raw
            .tail(keel_proto::v1::TailRequest {
                log: 0,
                start_offset: 17,
                no_follow: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        let mut responses = 0;
        while let Some(m) = stream.message().await.unwrap() {
            responses += 1;
            let bytes: usize = m.records.iter().map(|r| r.data.len()).sum();
            assert!(bytes <= 1 << 20, "a response of {bytes} bytes");
            got.extend(m.records);
        }
        assert!(responses >= 5, "{responses} responses");
        let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (17..3000).collect::<Vec<u64>>());
        for r in &got {
            assert_eq!(r.data, recs[r.offset as usize], "offset {}", r.offset);
        }
    });
}

#[test]
fn a_garbage_peer_is_disconnected_and_the_node_lives_on() {
    let c = Cluster::start(1, "garbage");
    let rt = rt();
    let _enter = rt.enter();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let n = &c.nodes[0];
    // Random bytes, then a well-formed length with a garbage body.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut junk = vec![0u8; 4096];
    for b in junk.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    for payload in [junk.clone(), [&[16u8, 0, 0, 0][..], &junk[..16]].concat()] {
        let mut s = std::net::TcpStream::connect(&n.peer_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&payload);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection not closed: {other:?}"),
        }
    }
    let o = keel(&["append", "-d", "still here", "--endpoints", &n.client_addr]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(n.log().contains("closed a peer connection"), "{}", n.log());
}

#[test]
fn a_node_runs_from_a_config_file_and_keel_variables() {
    let root = TempDir::new("config");
    let ports = free_ports(3);
    let cfg = root.0.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
            root.0.join("data").display(),
            ports[0],
            ports[1]
        ),
    )
    .unwrap();
    let log = std::fs::File::create(root.0.join("server.log")).unwrap();
    let mut child = std::process::Command::new(KEEL)
        .args(["server", "--config", &cfg.display().to_string()])
        .env("KEEL_METRICS_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("KEEL_CLUSTER_NAME", "from-env")
        .stderr(log)
        .spawn()
        .unwrap();
    let ep = format!("127.0.0.1:{}", ports[0]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let o = loop {
        let o = std::process::Command::new(KEEL)
            .args(["append", "-d", "configured", "--timeout", "1s"])
            .env("KEEL_ENDPOINTS", &ep)
            .output()
            .unwrap();
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "0");
    let meta = std::fs::read_to_string(root.0.join("data/node.toml")).unwrap();
    assert!(meta.contains("node_id = 1"), "{meta}");
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{}", ports[2])).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("keel_append_records_total"), "{body}");
    // SIGTERM stops it cleanly.
    sigterm(child.id());
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(root.0.join("server.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn without_a_quorum_appends_fail_clearly() {
    let mut c = Cluster::start(3, "noquorum");
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let ep = c.endpoints();
    let o = keel(&["append", "-d", "before", "--endpoints", &ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Leave one node: it cannot commit, and it stops claiming leadership.
    let survivor = if leader == 1 { 2 } else { 1 };
    let s = c.nodes[(survivor - 1) as usize].client_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !keel(&["get", "-i", "0", "--stale", "--endpoints", &s])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "node {survivor} never applied record 0"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in 1..=3 {
        if id != survivor {
            c.node(id).kill();
        }
    }
    let t0 = Instant::now();
    let o = keel(&[
        "append",
        "-d",
        "lost",
        "--timeout",
        "3s",
        "--endpoints",
        &ep,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no leader") || err.contains("no quorum") || err.contains("outcome unknown"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Stale reads still work on the survivor; linearizable ones do not.
    let o = keel(&["get", "-i", "0", "--stale", "--endpoints", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "before\n");
    let o = keel(&["get", "-i", "0", "--timeout", "2s", "--endpoints", &s]);
    assert_eq!(o.status.code(), Some(1));
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn a_paused_leader_does_not_stall_clients_for_their_deadline() {
    let mut c = Cluster::start(3, "pause");
    let rt = rt();
    let _enter = rt.enter();
    let leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    // The default attempt timeout (2 s); an overall deadline far longer
    // than the test allows, so that only moving on to the other nodes can
    // pass it.
    let client = Client::new(ClientOptions {
        endpoints: c.nodes.iter().map(|n| n.client_addr.clone()).collect(),
        timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .unwrap();
    let first = rt.block_on(client.append("before")).unwrap();
    let pid = c.node(leader).child.as_ref().unwrap().id();
    signal(pid, libc::SIGSTOP);
    let t = Instant::now();
    let mut ambiguous = 0;
    let off = loop {
        match rt.block_on(client.append("during")) {
            Ok(off) => break off,
            // The call in flight at the paused node: its outcome is
            // unknown, and the next call goes elsewhere.
            Err(keel_client::ClientError::Ambiguous(_)) if ambiguous < 3 => ambiguous += 1,
            Err(e) => {
                signal(pid, libc::SIGCONT);
                panic!("append while the leader is paused: {e}\n{}", c.logs());
            }
        }
    };
    let took = t.elapsed();
    signal(pid, libc::SIGCONT);
    assert!(
        took < Duration::from_secs(8),
        "the first append after the leader paused took {took:?} ({ambiguous} ambiguous)"
    );
    assert!(off > first, "offset {off} after {first}");
    let new_leader = rt.block_on(c.wait_leader(Duration::from_secs(15)));
    assert_ne!(new_leader, leader, "a new leader took over");
    assert_eq!(&rt.block_on(client.get(off)).unwrap()[..], b"during");
}

/// Handshakes with `node` as peer `from`; returns the connection once the
/// node accepted it.
fn handshake_as(node: &Node, cluster: u64, from: u64) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(&node.peer_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = keel_node::frame::encode_hello(&keel_node::frame::Hello {
        cluster,
        from,
        to: node.id,
        incarnation: 7,
        client_addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    });
    s.write_all(&hello).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let reply = keel_node::frame::decode_reply(Bytes::from(body)).unwrap();
    assert!(
        matches!(reply, keel_node::frame::HelloReply::Accepted { .. }),
        "{reply:?}"
    );
    s
}

#[test]
fn a_peer_that_connects_again_retires_its_old_connection() {
    // A partition can leave a peer's old connection open here with no FIN
    // ever to come; the peer dials anew only after giving the old one up,
    // so its new handshake must end the old connection rather than leave
    // one more reader behind for every partition.
    let mut c = Cluster::new(2, "redial", &[]);
    c.node(1).start();
    let n = &c.nodes[0];
    let deadline = Instant::now() + Duration::from_secs(15);
    let cluster = loop {
        let log = n.log();
        // The line that says the peer listener is bound (an earlier line,
        // "bootstrapping ...", names the cluster before it is).
        if let Some(line) = log.lines().find(|l| l.contains("keel node listening"))
            && let Some(i) = line.find("cluster=")
        {
            let hex: String = line[i + 8..].chars().take(16).collect();
            break u64::from_str_radix(&hex, 16).unwrap();
        }
        assert!(Instant::now() < deadline, "node 1 did not start:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut old = handshake_as(n, cluster, 2);
    let mut new = handshake_as(n, cluster, 2);
    let mut buf = [0u8; 16];
    match old.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the old connection was not closed: {other:?}"),
    }
    new.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match new.read(&mut buf) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("the new connection did not stay open: {other:?}"),
    }
}

/// `keel bench --stop-file` ends the measurement when the file appears, and
/// `--latency-log` has one line per measured operation (send time in µs
/// since the Unix epoch, latency in µs), the figures `benchmarks/catch-up.sh`
/// cuts its windows from.
#[test]
fn bench_stops_at_the_stop_file_and_logs_every_latency() {
    let c = Cluster::start(1, "bench-stop");
    let rt = rt();
    let _enter = rt.enter();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let stop = c.root.0.join("stop");
    let log = c.root.0.join("latencies");
    let endpoints = c.endpoints();
    let started = Instant::now();
    let child = keel_spawn(&[
        "bench",
        "--endpoints",
        &endpoints,
        "--clients",
        "4",
        "--size",
        "100",
        "--warmup",
        "0s",
        "--duration",
        "60s",
        "--stop-file",
        stop.to_str().unwrap(),
        "--latency-log",
        log.to_str().unwrap(),
        "--output",
        "json",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let touched_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    std::fs::write(&stop, b"").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "bench failed: {}", stderr(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stop file did not end the run"
    );
    let out: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let secs = out["duration_s"].as_f64().unwrap();
    assert!(secs > 0.5 && secs < 10.0, "measured {secs} s");
    let records = out["records"].as_u64().unwrap();
    assert!(records > 0);
    let lines: Vec<(u64, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split(' ').map(|x| x.parse::<u64>().unwrap());
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    assert_eq!(
        lines.len() as u64,
        records,
        "one line per measured operation"
    );
    assert!(
        lines.windows(2).all(|w| w[0].0 <= w[1].0),
        "sorted by send time"
    );
    // Sent before the stop file appeared (give the clock a second of slack).
    assert!(
        lines
            .iter()
            .all(|&(sent, _)| sent <= touched_us + 1_000_000)
    );
    assert!(lines.iter().all(|&(_, lat)| lat > 0));
}
