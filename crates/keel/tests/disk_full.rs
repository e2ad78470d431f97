//! A full disk, for real: a node's data directory on a small tmpfs, filled
//! up by appends. Mounting needs root, so the test is ignored by a plain
//! `cargo test`; `.ci/run` runs it (as root) with `--ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use keel_client::{Client, ClientOptions};

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mounting a {size} tmpfs on {} failed (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn client(ep: &str, timeout: Duration) -> Client {
    Client::new(ClientOptions {
        endpoints: vec![ep.to_string()],
        timeout,
        ..Default::default()
    })
    .unwrap()
}

fn record(i: usize) -> Bytes {
    let mut v = format!("record {i:06} ").into_bytes();
    v.resize(4096, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

#[test]
#[ignore = "mounts a small tmpfs: needs root; .ci/run runs it"]
fn a_full_disk_refuses_appends_clearly_and_resumes_when_space_is_freed() {
    let mut c = Cluster::new(1, "diskfull", &[]);
    let dir = c.nodes[0].dir.clone();
    let disk = Tmpfs::mount(&dir, "8m");
    // Leave the log about a megabyte.
    let filler = dir.join("filler.bin");
    std::fs::write(&filler, vec![1u8; 7 << 20]).unwrap();
    c.nodes[0].start();
    let ep = c.nodes[0].client_addr.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));

    // Append 4 KiB records until the disk is full.
    let short = client(&ep, Duration::from_secs(3));
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut first_error = None;
    for i in 0..1000 {
        match rt.block_on(short.append(record(i))) {
            Ok(off) => acked.push((off, record(i))),
            Err(e) => {
                first_error = Some(e.to_string());
                break;
            }
        }
    }
    let first_error = first_error.expect("1000 records of 4 KiB never filled a 1 MiB disk");
    assert!(
        acked.len() > 10,
        "only {} appends before the disk was full: {first_error}",
        acked.len()
    );

    // While it is full: appends are refused with a clear one-line error, the
    // node lives on and says why in its status.
    let o = keel(&[
        "append",
        "-d",
        "more",
        "--timeout",
        "2s",
        "--endpoints",
        &ep,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("disk of the leader is full"), "{err}");
    assert!(err.contains("no space left on device"), "{err}");
    let st = rt
        .block_on(short.status_of(&ep))
        .expect("status while full");
    assert!(st.role.contains("disk full"), "role: {}", st.role);
    // Reads of what was acknowledged still work.
    let (off0, data0) = acked[0].clone();
    assert_eq!(rt.block_on(short.get(off0)).unwrap(), data0);

    // Free space: the node resumes by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let long = client(&ep, Duration::from_secs(20));
    let t0 = Instant::now();
    let off = rt
        .block_on(long.append(record(5000)))
        .expect("an append after space was freed");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    acked.push((off, record(5000)));
    let st = rt.block_on(long.status_of(&ep)).unwrap();
    assert!(!st.role.contains("disk full"), "role: {}", st.role);

    // Every acknowledged record is at its offset, before and after a crash.
    let check = |cl: &Client, what: &str| {
        for (off, data) in &acked {
            let got = rt
                .block_on(cl.get(*off))
                .unwrap_or_else(|e| panic!("{what}: offset {off}: {e}"));
            assert_eq!(&got, data, "{what}: offset {off}");
        }
    };
    check(&long, "after space was freed");
    c.nodes[0].kill();
    c.nodes[0].start();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));
    let again = client(&ep, Duration::from_secs(20));
    check(&again, "after kill -9 and restart");
    let last = rt.block_on(again.append(record(6000))).unwrap();
    assert!(last > off, "{last} after {off}");

    let logs_before = std::fs::read_to_string(dir.with_extension("log1")).unwrap_or_default();
    assert!(logs_before.contains("the disk is full"), "{logs_before}");
    assert!(
        logs_before.contains("disk space is available again"),
        "{logs_before}"
    );
    c.nodes[0].kill();
    drop(disk);
}

#[test]
#[ignore = "mounts a small tmpfs: needs root; .ci/run runs it"]
fn a_follower_with_a_full_disk_waits_and_catches_up_when_space_is_freed() {
    let mut c = Cluster::new(3, "diskfull3", &[]);
    let dir = c.nodes[2].dir.clone();
    let disk = Tmpfs::mount(&dir, "8m");
    let filler = dir.join("filler.bin");
    std::fs::write(&filler, vec![1u8; 7 << 20]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    // Nodes 1 and 2 elect a leader; node 3 joins as a follower.
    c.nodes[0].start();
    c.nodes[1].start();
    rt.block_on(c.wait_leader(Duration::from_secs(15)));
    c.nodes[2].start();
    let ep3 = c.nodes[2].client_addr.clone();
    let cl = c.client();

    // Twice node 3's free space: the quorum of 1 and 2 commits it all.
    let mut acked = Vec::new();
    for i in 0..500 {
        let off = rt
            .block_on(cl.append(record(i)))
            .unwrap_or_else(|e| panic!("append {i} with node 3's disk full: {e}"));
        acked.push((off, record(i)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = rt.block_on(cl.status_of(&ep3)).expect("node 3 answers");
        if st.role.contains("disk full") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never reported a full disk: {}",
            st.role
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Free space: node 3 catches up by itself and holds every record.
    std::fs::remove_file(&filler).unwrap();
    let (last_off, _) = acked.last().cloned().unwrap();
    let stale = |off: u64| {
        keel(&[
            "get",
            "-i",
            &off.to_string(),
            "--stale",
            "--endpoints",
            &ep3,
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stale(last_off).status.success() {
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up after space was freed; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = rt.block_on(cl.status_of(&ep3)).unwrap();
    assert!(!st.role.contains("disk full"), "role: {}", st.role);
    let only3 = client(&ep3, Duration::from_secs(10));
    let got = rt
        .block_on(only3.read(0, last_off + 1, true))
        .expect("stale read of node 3");
    let got: std::collections::BTreeMap<u64, Bytes> =
        got.into_iter().map(|r| (r.offset, r.data)).collect();
    for (off, data) in &acked {
        assert_eq!(got.get(off), Some(data), "node 3, offset {off}");
    }
    let log3 = c.nodes[2].log();
    assert!(log3.contains("the disk is full"), "{log3}");
    for n in &mut c.nodes {
        n.kill();
    }
    drop(disk);
}
