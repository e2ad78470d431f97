//! A node's data directory:
//!
//! ```text
//! <data-dir>/keel.lock          flock'ed while the node runs (holds its pid)
//! <data-dir>/node.toml          cluster id and node id, written at first start
//! <data-dir>/groups/<group>/    one keel-log store per raft group
//! ```
//!
//! A second server on the same directory fails at once (the lock); a
//! directory written by another node id or another cluster is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::StartError;

pub struct DataDir {
    pub path: PathBuf,
    _lock: File,
}

#[derive(Deserialize)]
struct NodeMeta {
    cluster_id: String,
    node_id: u64,
}

const META: &str = "node.toml";
const LOCK: &str = "keel.lock";

impl DataDir {
    pub fn open(path: &Path, node_id: u64, cluster_id: u64) -> Result<DataDir, StartError> {
        let io = |source| StartError::DataDir {
            dir: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StartError::DataDirLocked {
                    dir: path.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        let _ = writeln!(lock, "{}", std::process::id());
        let expected_cluster = format!("{cluster_id:016x}");
        let meta_path = path.join(META);
        match std::fs::read_to_string(&meta_path) {
            Ok(text) => {
                let m: NodeMeta = toml::from_str(&text).map_err(|e| StartError::BadMeta {
                    file: meta_path.clone(),
                    reason: e.to_string(),
                })?;
                if m.node_id != node_id {
                    return Err(StartError::DataDirMismatch {
                        dir: path.to_path_buf(),
                        what: "node",
                        found: m.node_id.to_string(),
                        expected: format!("node {node_id}"),
                    });
                }
                if m.cluster_id != expected_cluster {
                    return Err(StartError::DataDirMismatch {
                        dir: path.to_path_buf(),
                        what: "cluster",
                        found: m.cluster_id,
                        expected: format!(
                            "cluster {expected_cluster} (derived from --cluster-name, or else from --peers)"
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = format!(
                    "# keel node identity, written at this node's first start. Do not edit:\n\
                     # a node refuses a data directory of another cluster or node id.\n\
                     cluster_id = \"{expected_cluster}\"\nnode_id = {node_id}\n"
                );
                let tmp = path.join("node.toml.tmp");
                let mut f = File::create(&tmp).map_err(io)?;
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &meta_path).map_err(io)?;
                File::open(path).and_then(|d| d.sync_all()).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn group_dir(&self, group: u64) -> PathBuf {
        self.path.join("groups").join(group.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_and_identity_are_enforced() {
        let dir = std::env::temp_dir().join(format!("keel-dd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = DataDir::open(&dir, 1, 42).unwrap();
        assert!(matches!(
            DataDir::open(&dir, 1, 42),
            Err(StartError::DataDirLocked { .. })
        ));
        drop(d);
        assert!(matches!(
            DataDir::open(&dir, 2, 42),
            Err(StartError::DataDirMismatch { what: "node", .. })
        ));
        assert!(matches!(
            DataDir::open(&dir, 1, 43),
            Err(StartError::DataDirMismatch {
                what: "cluster",
                ..
            })
        ));
        assert!(DataDir::open(&dir, 1, 42).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
