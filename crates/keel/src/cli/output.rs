//! Output of the client commands: plain text, or `--output json` (one JSON
//! object per line; record data as UTF-8 text when it is valid, base64
//! otherwise, with `encoding` saying which).

use std::io::Write;

use base64::Engine as _;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// `{"offset": n, "data": ..., "encoding": "utf8" | "base64"}`.
pub fn record_json(offset: u64, data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(s) => json!({"offset": offset, "data": s, "encoding": "utf8"}),
        Err(_) => json!({
            "offset": offset,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "encoding": "base64",
        }),
    }
}

/// Writes one line (JSON object or text); a closed stdout ends quietly.
pub fn line(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(s.as_bytes())?;
    out.write_all(b"\n")
}

/// Prints one record: its data as a line (text) or a JSON object.
pub fn record(out: &mut impl Write, mode: Output, offset: u64, data: &[u8]) -> std::io::Result<()> {
    match mode {
        Output::Json => line(out, &record_json(offset, data).to_string()),
        Output::Text => {
            out.write_all(data)?;
            out.write_all(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_says_how_data_is_encoded() {
        let v = record_json(3, b"hi");
        assert_eq!(v["offset"], 3);
        assert_eq!(v["data"], "hi");
        assert_eq!(v["encoding"], "utf8");
        let v = record_json(4, &[0xff, 0x00]);
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["data"], "/wA=");
    }
}
