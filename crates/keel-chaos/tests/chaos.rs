//! The runner against real servers: a correct server passes a short
//! schedule, and servers with a deliberate durability bug are caught.
//!
//! These need root (network namespaces, nftables) and a keel binary built
//! with the test-only feature; they take about a minute, so they are not
//! part of `cargo test --workspace` and `.ci/run` runs them explicitly:
//!
//! ```text
//! cargo build --release -p keel --features fault-injection
//! cp target/release/keel target/release/keel-fault
//! cargo test --release -p keel-chaos --test chaos -- --ignored --test-threads 1
//! ```
//!
//! `KEEL_CHAOS_KEEL_BIN` overrides where the fault build is looked for.
//! When anything is missing they fail and say what, never skip.

use std::path::PathBuf;
use std::process::Command;

const RUNNER: &str = env!("CARGO_BIN_EXE_keel-chaos");

fn fault_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KEEL_CHAOS_KEEL_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/keel-fault");
    assert!(
        p.is_file(),
        "no fault-injection build of keel at {}: run \
         `cargo build --release -p keel --features fault-injection && \
         cp target/release/keel target/release/keel-fault` (or set KEEL_CHAOS_KEEL_BIN)",
        p.display()
    );
    p
}

struct Run {
    code: i32,
    json: serde_json::Value,
    stdout: String,
    stderr: String,
}

fn run(tag: &str, args: &[&str]) -> Run {
    let work = std::env::temp_dir().join(format!("keelchaos-test-{tag}-{}", std::process::id()));
    let json_path = work.join("summary.json");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(RUNNER)
        .arg("--keel-bin")
        .arg(fault_bin())
        .arg("--work-dir")
        .arg(&work)
        .arg("--summary-json")
        .arg(&json_path)
        .args(args)
        .output()
        .expect("run keel-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "the runner could not run (exit {code}); is this root with nftables installed?\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path).expect("the runner wrote its summary"),
    )
    .expect("summary is JSON");
    if code == 0 {
        let _ = std::fs::remove_dir_all(&work);
    }
    Run {
        code,
        json,
        stdout,
        stderr,
    }
}

fn total(r: &Run, field: &str) -> u64 {
    r.json["report"]["total"][field].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "needs root, nftables and a fault-injection build of keel; .ci/run runs it"]
fn a_correct_server_passes_crashes_that_lose_unsynced_writes_and_partitions() {
    let r = run(
        "correct",
        &[
            "--nemeses",
            "lose-unsynced-all,partition-leader,lose-unsynced-minority,pause-leader",
            "--rounds",
            "1",
            "--hold",
            "3s",
        ],
    );
    assert_eq!(
        r.code, 0,
        "the checker found violations on a correct server:\n{}\n{}",
        r.stdout, r.stderr
    );
    assert!(
        total(&r, "acknowledged") > 100,
        "too little load:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("un-fsynced data"),
        "no lost-writes crash ran:\n{}",
        r.stderr
    );
}

#[test]
#[ignore = "needs root, nftables and a fault-injection build of keel; .ci/run runs it"]
fn acknowledging_without_fsync_is_caught() {
    // Every node loses what it did not fsync at once: with fsync skipped,
    // that is every acknowledged append since the start.
    let r = run(
        "skip-fsync",
        &[
            "--bug",
            "skip-fsync",
            "--nemeses",
            "lose-unsynced-all",
            "--rounds",
            "1",
            "--hold",
            "2s",
        ],
    );
    assert_eq!(
        r.code, 1,
        "the checker passed a server that skips fsync:\n{}",
        r.stdout
    );
    assert!(
        total(&r, "lost") > 0,
        "no acknowledged append reported lost:\n{}",
        r.stdout
    );
}

fn row<'a>(r: &'a Run, nemesis: &str) -> &'a serde_json::Value {
    r.json["report"]["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|x| x["nemesis"] == nemesis))
        .unwrap_or_else(|| panic!("no row for {nemesis}:\n{}", r.stdout))
}

#[test]
#[ignore = "needs root, nftables and a fault-injection build of keel; .ci/run runs it"]
fn a_healed_ring_and_a_paused_leader_cost_clients_little() {
    // Regressions of two availability faults this runner found: after a
    // one-way ring healed, peers waited out TCP's retransmission back-off
    // on connections the partition had black-holed (about 3 s); and a
    // paused leader held every client call for its whole deadline.
    let r = run(
        "heal",
        &[
            "--nemeses",
            "partition-ring,pause-leader",
            "--rounds",
            "2",
            "--hold",
            "5s",
            "--recovery-bound",
            "2s",
        ],
    );
    assert_eq!(r.code, 0, "violations:\n{}\n{}", r.stdout, r.stderr);
    let ring = row(&r, "partition-ring");
    let ms = ring["max_recovery_ms"].as_u64().expect("the ring healed");
    assert!(ms < 2000, "appends resumed {ms} ms after the ring healed");
    // A 5 s pause of the leader: the clients turn to the others after
    // their 2 s attempt bound, while the rest elect a new leader.
    let pause = row(&r, "pause-leader");
    let gap = pause["longest_unavailable_ms"].as_u64().unwrap();
    assert!(
        gap < 4500,
        "no append was acknowledged for {gap} ms while the leader was paused for 5 s"
    );
}

#[test]
#[ignore = "needs root, nftables and a fault-injection build of keel; .ci/run runs it"]
fn membership_changes_among_crashes_lose_no_acknowledged_append() {
    // Nodes join, are promoted, demoted, removed and replaced (half the
    // membership phases with a crash or a partition meanwhile), between
    // a kill -9 and a lost-writes crash of the members of the moment; the
    // members of the final configuration must hold every acknowledged
    // append, and agree.
    let r = run(
        "membership",
        &[
            "--nemeses",
            "membership,kill-one,membership,lose-unsynced-minority",
            "--rounds",
            "1",
            "--hold",
            "3s",
            "--seed",
            "3",
        ],
    );
    assert_eq!(r.code, 0, "violations:\n{}\n{}", r.stdout, r.stderr);
    let changes = r.json["membership"].as_array().expect("membership records");
    assert!(
        changes.iter().any(|c| c["outcome"] == "ok"),
        "no membership change succeeded:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let members = &r.json["final_config"];
    assert!(
        members["voters"].as_array().is_some_and(|v| v.len() >= 3),
        "final configuration: {members}"
    );
    assert_eq!(row(&r, "membership")["phases"], 2);
    assert!(
        total(&r, "acknowledged") > 100,
        "too little load:\n{}",
        r.stdout
    );
}
