//! Test-only switches (feature `fault-injection`), read from the
//! environment at start, for the real-process fault tests (`keel-chaos`).
//! A build without the feature contains none of this.
//!
//! | variable | effect |
//! | --- | --- |
//! | `KEEL_FAULT_SYNC_RECORD=1` | keep `<segment>.synced` beside each segment: the length its last completed fdatasync made durable (so a runner can cut un-fsynced bytes after kill -9) |
//! | `KEEL_FAULT_SKIP_FSYNC=1` | BUG: segment fdatasyncs are skipped but reported done (implies the sync record) |
//! | `KEEL_FAULT_ACK_BEFORE_PERSIST=1` | BUG: keel-raft sends acknowledgements and votes before persisting |
//! | `KEEL_FAULT_COMMIT_OLD_TERM=1` | BUG: keel-raft commits old-term entries by counting replicas |

use keel_log::LogOptions;
use keel_log::sync_record::SyncRecordFs;
use tracing::warn;

fn on(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Applies the log switches (`KEEL_FAULT_SYNC_RECORD`, `KEEL_FAULT_SKIP_FSYNC`)
/// to a group's log options.
pub fn apply_to_log(opts: &mut LogOptions) {
    let skip = on("KEEL_FAULT_SKIP_FSYNC");
    if skip {
        warn!("FAULT INJECTION: segment fdatasyncs are skipped; acknowledged data is not durable");
    }
    if skip || on("KEEL_FAULT_SYNC_RECORD") {
        opts.fs = SyncRecordFs::new_arc(skip);
    }
}

/// Applies the raft switches (`KEEL_FAULT_ACK_BEFORE_PERSIST`,
/// `KEEL_FAULT_COMMIT_OLD_TERM`) to a group's raft configuration.
pub fn apply_to_raft(rc: &mut keel_raft::Config) {
    if on("KEEL_FAULT_ACK_BEFORE_PERSIST") {
        warn!("FAULT INJECTION: acknowledging before persisting");
        rc.knobs.ack_before_persist = true;
    }
    if on("KEEL_FAULT_COMMIT_OLD_TERM") {
        warn!("FAULT INJECTION: committing old-term entries by counting");
        rc.knobs.commit_old_term = true;
    }
}
