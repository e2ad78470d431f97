//! The node's identity file, `<data-dir>/node.toml`: which node this data
//! directory belongs to, its incarnation, and (once bootstrapped or joined)
//! its cluster.
//!
//! ```text
//! node.toml, format 2 (TOML, after a comment header)
//!   format          = 2
//!   node_id         = 1                    integer, >= 1
//!   incarnation     = "<16 hex digits>"    random, made with the directory; never 0
//!   cluster_id      = "<16 hex digits>"    absent until bootstrapped or joined
//!   cluster_name    = "demo"               optional; only with cluster_id
//!   created_by      = "bootstrap"|"join"   present exactly with cluster_id
//!   bootstrap_peers = "1=h:p,2=h:p"        optional; only when created_by = "bootstrap"
//! ```
//!
//! Unknown keys are refused (a later format adds keys under a new format
//! number). A file without `format` was written by a keel from before
//! run-time membership and is refused. [`Identity::save`] replaces the
//! file atomically: `node.toml.tmp`, fsync, rename, fsync the directory.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The identity file's name in the data directory.
pub const FILE_NAME: &str = "node.toml";
const TMP_NAME: &str = "node.toml.tmp";
const FORMAT: i64 = 2;
/// Larger files are not identity files.
const MAX_LEN: u64 = 64 << 10;

/// Who this data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's id (>= 1).
    pub node_id: u64,
    /// Random, made when the directory was created; never 0. Peers refuse a
    /// member whose incarnation changed (its directory was replaced).
    pub incarnation: u64,
    /// The cluster, once bootstrapped or joined.
    pub cluster: Option<ClusterIdentity>,
}

/// The cluster a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The cluster's name, when it was given one.
    pub cluster_name: Option<String>,
    /// How this node became a member.
    pub created_by: CreatedBy,
    /// Bootstrap only: the peer list the cluster was created with
    /// (`1=host:port,2=host:port`).
    pub bootstrap_peers: Option<String>,
}

/// How a node became a member of its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreatedBy {
    /// It founded the cluster (wrote the bootstrap entry).
    Bootstrap,
    /// It joined an existing cluster with a join ticket.
    Join,
}

/// Why the identity file cannot be read or written. Each says what to do.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("cannot {action} {}: {source}; check the data directory's permissions and free space", path.display())]
    Io {
        /// "read", "write", ...
        action: &'static str,
        /// The file (or directory).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a keel from before run-time membership.
    #[error(
        "{} was written by a keel from before run-time membership (it has no `format = 2`) \
         and cannot be used: start the node on an empty data directory",
        path.display()
    )]
    Legacy {
        /// The file.
        path: PathBuf,
    },
    /// The file has a format this keel does not know.
    #[error(
        "{} has format {format}, which this keel does not read (it reads format 2): \
         it was written by another version of keel; run that version on it",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The format it names.
        format: String,
    },
    /// The file is not a valid identity file.
    #[error(
        "{} is not a valid keel node identity ({reason}); keel writes it and it must not be edited: \
         restore it from a backup, or start the node on an empty data directory",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The identity cannot be saved as it is (a bug in the caller).
    #[error("cannot save node identity: {0}")]
    Invalid(String),
}

/// The file as written, field for field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: i64,
    node_id: u64,
    incarnation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<CreatedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap_peers: Option<String>,
}

const HEADER: &str = "\
# keel node identity: which node this data directory belongs to, and its
# cluster. Written by keel. Do not edit: a node refuses a data directory of
# another node id or cluster, and peers refuse a member whose incarnation
# changed.
";

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_hex(what: &str, s: &str) -> Result<u64, String> {
    if s.len() != 16 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{what} `{s}` is not 16 hex digits"));
    }
    u64::from_str_radix(s, 16).map_err(|e| format!("{what} `{s}`: {e}"))
}

impl Identity {
    /// A new identity for a fresh data directory: no cluster yet, and a
    /// random non-zero incarnation.
    pub fn fresh(node_id: u64) -> Identity {
        Identity {
            node_id,
            incarnation: random_incarnation(),
            cluster: None,
        }
    }

    /// Reads `dir/node.toml`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(FILE_NAME);
        let io = |source| IdentityError::Io {
            action: "read",
            path: path.clone(),
            source,
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut bytes = Vec::new();
        f.take(MAX_LEN + 1).read_to_end(&mut bytes).map_err(io)?;
        Identity::parse(&bytes)
            .map(Some)
            .map_err(|e| e.at(path.clone()))
    }

    /// Decodes the file's bytes.
    fn parse(bytes: &[u8]) -> Result<Identity, ParseError> {
        if bytes.len() as u64 > MAX_LEN {
            return Err(ParseError::Corrupt(format!(
                "it is over {MAX_LEN} bytes long"
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ParseError::Corrupt(format!("it is not UTF-8: {e}")))?;
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ParseError::Corrupt(format!("it is not TOML: {}", e.message())))?;
        match table.get("format") {
            None => return Err(ParseError::Legacy),
            Some(toml::Value::Integer(FORMAT)) => {}
            Some(v) => return Err(ParseError::UnknownFormat(v.to_string())),
        }
        let raw: Raw = table
            .try_into()
            .map_err(|e: toml::de::Error| ParseError::Corrupt(e.message().to_string()))?;
        Identity::from_raw(raw).map_err(ParseError::Corrupt)
    }

    fn from_raw(raw: Raw) -> Result<Identity, String> {
        let incarnation = parse_hex("incarnation", &raw.incarnation)?;
        let cluster = match (raw.cluster_id, raw.created_by) {
            (Some(id), Some(created_by)) => Some(ClusterIdentity {
                cluster_id: parse_hex("cluster_id", &id)?,
                cluster_name: raw.cluster_name,
                created_by,
                bootstrap_peers: raw.bootstrap_peers,
            }),
            (None, None) if raw.cluster_name.is_none() && raw.bootstrap_peers.is_none() => None,
            (Some(_), None) => return Err("cluster_id without created_by".into()),
            _ => return Err("cluster settings without cluster_id".into()),
        };
        let id = Identity {
            node_id: raw.node_id,
            incarnation,
            cluster,
        };
        id.check()?;
        Ok(id)
    }

    /// What both `load` and `save` insist on.
    fn check(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id 0 (ids start at 1)".into());
        }
        if self.node_id > i64::MAX as u64 {
            return Err(format!(
                "node_id {} is above {} (TOML integers are signed)",
                self.node_id,
                i64::MAX
            ));
        }
        if self.incarnation == 0 {
            return Err("incarnation 0".into());
        }
        if let Some(c) = &self.cluster
            && c.created_by == CreatedBy::Join
            && c.bootstrap_peers.is_some()
        {
            return Err("bootstrap_peers on a node that joined".into());
        }
        Ok(())
    }

    fn to_text(&self) -> Result<String, IdentityError> {
        self.check().map_err(IdentityError::Invalid)?;
        let c = self.cluster.as_ref();
        let raw = Raw {
            format: FORMAT,
            node_id: self.node_id,
            incarnation: hex(self.incarnation),
            cluster_id: c.map(|c| hex(c.cluster_id)),
            cluster_name: c.and_then(|c| c.cluster_name.clone()),
            created_by: c.map(|c| c.created_by),
            bootstrap_peers: c.and_then(|c| c.bootstrap_peers.clone()),
        };
        let body = toml::to_string(&raw).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Writes `dir/node.toml` atomically: `node.toml.tmp`, fsync, rename,
    /// fsync the directory.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let text = self.to_text()?;
        let tmp = dir.join(TMP_NAME);
        let path = dir.join(FILE_NAME);
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io {
                action,
                path,
                source,
            }
        };
        let written = (|| {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(io("rename to", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
    }
}

/// A parse failure before the path is known.
enum ParseError {
    Legacy,
    UnknownFormat(String),
    Corrupt(String),
}

impl ParseError {
    fn at(self, path: PathBuf) -> IdentityError {
        match self {
            ParseError::Legacy => IdentityError::Legacy { path },
            ParseError::UnknownFormat(format) => IdentityError::UnknownFormat { path, format },
            ParseError::Corrupt(reason) => IdentityError::Corrupt { path, reason },
        }
    }
}

/// A random non-zero u64 from std's per-process random hash keys, the
/// time, the pid and a counter (so two calls in one process differ too).
fn random_incarnation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let v = h.finish();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir()
                .join(format!("keel-node-identity-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn bootstrapped() -> Identity {
        Identity {
            node_id: 3,
            incarnation: 0x9f1c_0000_0000_00ab,
            cluster: Some(ClusterIdentity {
                cluster_id: 0x0123_4567_89ab_cdef,
                cluster_name: Some("demo \"quoted\"".into()),
                created_by: CreatedBy::Bootstrap,
                bootstrap_peers: Some("1=h:1,2=h:2,3=h:3".into()),
            }),
        }
    }

    #[test]
    fn a_missing_file_loads_as_none() {
        let d = TempDir::new("missing");
        assert!(Identity::load(&d.0).unwrap().is_none());
    }

    #[test]
    fn identities_round_trip_through_the_file() {
        let d = TempDir::new("round-trip");
        let joined = Identity {
            node_id: 7,
            incarnation: 1,
            cluster: Some(ClusterIdentity {
                cluster_id: u64::MAX,
                cluster_name: None,
                created_by: CreatedBy::Join,
                bootstrap_peers: None,
            }),
        };
        for id in [Identity::fresh(1), bootstrapped(), joined] {
            id.save(&d.0).unwrap();
            assert_eq!(Identity::load(&d.0).unwrap(), Some(id));
        }
        assert!(!d.0.join(TMP_NAME).exists());
    }

    #[test]
    fn the_file_has_a_header_and_the_documented_keys() {
        let d = TempDir::new("text");
        bootstrapped().save(&d.0).unwrap();
        let text = std::fs::read_to_string(d.0.join(FILE_NAME)).unwrap();
        assert!(text.starts_with("# keel node identity"), "{text}");
        assert!(text.contains("Do not edit"), "{text}");
        for line in [
            "format = 2",
            "node_id = 3",
            "incarnation = \"9f1c0000000000ab\"",
            "cluster_id = \"0123456789abcdef\"",
            "created_by = \"bootstrap\"",
            "bootstrap_peers = \"1=h:1,2=h:2,3=h:3\"",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let fresh = Identity::fresh(2).to_text().unwrap();
        assert!(!fresh.contains("cluster_id"), "{fresh}");
    }

    #[test]
    fn a_legacy_file_is_refused_with_what_to_do() {
        let d = TempDir::new("legacy");
        std::fs::write(
            d.0.join(FILE_NAME),
            "# keel node identity\ncluster_id = \"0000000000000001\"\nnode_id = 1\n",
        )
        .unwrap();
        let e = Identity::load(&d.0).unwrap_err();
        assert!(matches!(e, IdentityError::Legacy { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("before run-time membership"), "{msg}");
        assert!(msg.contains("empty data directory"), "{msg}");
    }

    #[test]
    fn another_format_is_refused() {
        let d = TempDir::new("format");
        let text = bootstrapped()
            .to_text()
            .unwrap()
            .replace("format = 2", "format = 3");
        std::fs::write(d.0.join(FILE_NAME), text).unwrap();
        let e = Identity::load(&d.0).unwrap_err();
        assert!(matches!(e, IdentityError::UnknownFormat { .. }), "{e:?}");
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let d = TempDir::new("corrupt");
        let path = d.0.join(FILE_NAME);
        let good = bootstrapped().to_text().unwrap();
        let bad = [
            "format = 2\nnode_id = ".to_string(),
            good.replace("9f1c0000000000ab", "9f1c"),
            good.replace("9f1c0000000000ab", "+f1c0000000000ab"),
            good.replace("9f1c0000000000ab", "0000000000000000"),
            good.replace("node_id = 3", "node_id = 0"),
            good.replace("node_id = 3", "node_id = -3"),
            good.replace("bootstrap\"", "magic\""),
            good.replace("created_by = \"bootstrap\"\n", ""),
            good.replace("cluster_id = \"0123456789abcdef\"\n", ""),
            good.replace("created_by = \"bootstrap\"", "created_by = \"join\""),
            format!("{good}extra = 1\n"),
        ];
        for text in bad {
            std::fs::write(&path, &text).unwrap();
            let e = Identity::load(&d.0).unwrap_err();
            assert!(
                matches!(e, IdentityError::Corrupt { .. }),
                "{e:?} for\n{text}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("must not be edited"), "{msg}");
        }
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        assert!(matches!(
            Identity::load(&d.0),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_identity_that_cannot_be_written_back_is_not_saved() {
        let d = TempDir::new("invalid");
        for id in [
            Identity::fresh(0),
            Identity::fresh(u64::MAX),
            Identity {
                incarnation: 0,
                ..Identity::fresh(1)
            },
        ] {
            assert!(matches!(id.save(&d.0), Err(IdentityError::Invalid(_))));
        }
        assert!(Identity::load(&d.0).unwrap().is_none());
    }

    #[test]
    fn fresh_incarnations_differ_and_are_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = Identity::fresh(1);
            assert_ne!(id.incarnation, 0);
            assert!(id.cluster.is_none());
            assert!(seen.insert(id.incarnation));
        }
    }

    #[test]
    fn random_bytes_on_disk_give_an_error_never_a_panic() {
        let mut x: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = bootstrapped().to_text().unwrap().into_bytes();
        for round in 0..500 {
            let b: Vec<u8> = match round % 3 {
                0 => {
                    let len = (next() % 300) as usize;
                    (0..len).map(|_| next() as u8).collect()
                }
                1 => {
                    let len = (next() % 300) as usize;
                    (0..len)
                        .map(|_| b" =\"\n#[]abc0123{}.,-+"[(next() % 20) as usize])
                        .collect()
                }
                _ => {
                    let mut b = good.clone();
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                    b.truncate((next() as usize) % (good.len() + 1));
                    b
                }
            };
            let _ = Identity::parse(&b);
        }
        let big = vec![b'#'; (MAX_LEN + 10) as usize];
        assert!(matches!(Identity::parse(&big), Err(ParseError::Corrupt(_))));
    }
}
