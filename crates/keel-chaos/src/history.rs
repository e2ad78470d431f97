//! The client history: every operation with its invocation and completion
//! times (microseconds since the run started) and its outcome, written as
//! JSON lines (one operation per line, in invocation order).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed: an append was acknowledged, a read returned.
    Ok,
    /// Definitely did not happen (the server refused it before proposing,
    /// or said the entry was replaced).
    Fail,
    /// May or may not have happened (timeout, connection lost after the
    /// request was sent, no quorum in time).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Call {
    /// Append one unique value; `offset` is what the server acknowledged.
    Append { value: String, offset: Option<u64> },
    /// A linearizable read of `[from, to)`; `records` what it returned
    /// (possibly fewer: the log ended). A read of one offset has
    /// `to == from + 1`.
    Read {
        from: u64,
        to: u64,
        records: Vec<(u64, String)>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    /// Worker number; the recovery probes use `probe`.
    pub client: String,
    /// Index of the nemesis phase in which it was invoked.
    pub phase: usize,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub call: Call,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn append_value(&self) -> Option<&str> {
        match &self.call {
            Call::Append { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Writes the history, sorted by invocation time.
pub fn write_jsonl(path: &Path, ops: &mut [Op]) -> std::io::Result<()> {
    ops.sort_by_key(|o| (o.invoke_us, o.id));
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops.iter() {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}
