use thiserror::Error;

/// Why a byte sequence is not a valid batch. Every variant is something a
/// corrupt file or a misbehaving peer can produce; none is a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field {length} is outside {min}..={max}")]
    BadLength { length: u64, min: usize, max: usize },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported batch format version {0} (this build reads version 1)")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("unknown batch flags {0:#06x}")]
    Flags(u16),
    #[error("raft index 0 is not a valid entry index")]
    ZeroIndex,
    #[error("control entry of kind {kind} carries {count} records (must carry none)")]
    ControlWithRecords { kind: u8, count: u32 },
    #[error("data body malformed: {0}")]
    Records(&'static str),
    #[error("user offsets overflow: base {base} + count {count}")]
    OffsetOverflow { base: u64, count: u32 },
}
