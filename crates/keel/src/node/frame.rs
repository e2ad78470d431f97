//! Framing of the peer transport and the connection handshake.
//!
//! ```text
//! Frame, on every peer connection, in both directions
//!    0   4  length     u32 LE: bytes of payload that follow (1 ..= MAX_FRAME)
//!    4   .  payload    one raft message (keel_raft::codec), or a handshake
//!
//! Hello: the payload of the first frame the dialing node sends
//!    0   8  magic      "KEELPEER"
//!    8   2  version    u16 LE, PROTOCOL_VERSION (1)
//!   10   8  cluster    u64 LE, the sender's cluster id
//!   18   8  from       u64 LE, the sender's node id
//!   26   8  to         u64 LE, the node id the sender believes it dialed
//!   34   2  n          u16 LE, bytes of the client address (<= 512)
//!   36   n  client     the sender's client API address, UTF-8
//!
//! HelloReply: the payload of the only frame the accepting node sends
//!    0   8  magic      "KEELPEER"
//!    8   2  version    u16 LE, PROTOCOL_VERSION
//!   10   1  status     0 accepted, 1 refused
//!   11   2  n          u16 LE (<= 512)
//!   13   n  text       accepted: the acceptor's client API address;
//!                      refused: the reason, for the dialer's log
//! ```
//!
//! After the handshake the dialer sends raft messages, the acceptor sends
//! nothing: a connection carries one direction, and each pair of nodes has
//! one connection per direction, carrying every raft group (each message
//! names its group). Frames are checked (length bounds, then the message
//! codec, which checks every entry's CRC); anything wrong closes the
//! connection, never the node.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAGIC: &[u8; 8] = b"KEELPEER";
pub const PROTOCOL_VERSION: u16 = 1;
/// The largest payload accepted: one maximal entry plus message overhead.
pub const MAX_FRAME: usize = keel_format::MAX_BATCH_LEN + (1 << 20);
/// Handshake frames are small.
pub const MAX_HELLO_FRAME: usize = 1024;
const MAX_TEXT: usize = 512;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {len} is outside 1..={max}")]
    Length { len: usize, max: usize },
    #[error("bad handshake: {0}")]
    Handshake(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster: u64,
    pub from: u64,
    pub to: u64,
    pub client_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    Accepted { client_addr: String },
    Refused { reason: String },
}

fn put_text(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16_le(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn get_text(b: &mut Bytes) -> Result<String, FrameError> {
    if b.remaining() < 2 {
        return Err(FrameError::Handshake("text length cut short".into()));
    }
    let n = b.get_u16_le() as usize;
    if n > MAX_TEXT || b.remaining() != n {
        return Err(FrameError::Handshake(format!(
            "text of {n} bytes where {} remain",
            b.remaining()
        )));
    }
    String::from_utf8(b.split_to(n).to_vec())
        .map_err(|_| FrameError::Handshake("text is not UTF-8".into()))
}

fn check_magic(b: &mut Bytes) -> Result<(), FrameError> {
    if b.remaining() < 10 || &b[..8] != MAGIC {
        return Err(FrameError::Handshake(
            "not a keel peer (bad magic); is something else dialing the peer port?".into(),
        ));
    }
    b.advance(8);
    let v = b.get_u16_le();
    if v != PROTOCOL_VERSION {
        return Err(FrameError::Handshake(format!(
            "peer protocol version {v}, this node speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

/// Appends a frame holding `payload`.
pub fn put_frame(out: &mut BytesMut, payload: &[u8]) {
    out.put_u32_le(payload.len() as u32);
    out.put_slice(payload);
}

pub fn encode_hello(h: &Hello) -> BytesMut {
    let mut p = BytesMut::with_capacity(64);
    p.put_slice(MAGIC);
    p.put_u16_le(PROTOCOL_VERSION);
    p.put_u64_le(h.cluster);
    p.put_u64_le(h.from);
    p.put_u64_le(h.to);
    put_text(&mut p, &h.client_addr);
    let mut out = BytesMut::with_capacity(p.len() + 4);
    put_frame(&mut out, &p);
    out
}

pub fn decode_hello(mut b: Bytes) -> Result<Hello, FrameError> {
    check_magic(&mut b)?;
    if b.remaining() < 24 {
        return Err(FrameError::Handshake("hello cut short".into()));
    }
    let cluster = b.get_u64_le();
    let from = b.get_u64_le();
    let to = b.get_u64_le();
    let client_addr = get_text(&mut b)?;
    Ok(Hello {
        cluster,
        from,
        to,
        client_addr,
    })
}

pub fn encode_reply(r: &HelloReply) -> BytesMut {
    let mut p = BytesMut::with_capacity(64);
    p.put_slice(MAGIC);
    p.put_u16_le(PROTOCOL_VERSION);
    match r {
        HelloReply::Accepted { client_addr } => {
            p.put_u8(0);
            put_text(&mut p, client_addr);
        }
        HelloReply::Refused { reason } => {
            p.put_u8(1);
            put_text(&mut p, reason);
        }
    }
    let mut out = BytesMut::with_capacity(p.len() + 4);
    put_frame(&mut out, &p);
    out
}

pub fn decode_reply(mut b: Bytes) -> Result<HelloReply, FrameError> {
    check_magic(&mut b)?;
    if b.remaining() < 1 {
        return Err(FrameError::Handshake("reply cut short".into()));
    }
    let status = b.get_u8();
    let text = get_text(&mut b)?;
    match status {
        0 => Ok(HelloReply::Accepted { client_addr: text }),
        1 => Ok(HelloReply::Refused { reason: text }),
        s => Err(FrameError::Handshake(format!("unknown reply status {s}"))),
    }
}

/// Reads one frame's payload, zero-copy out of `buf` (which keeps any bytes
/// of following frames). Refuses a length outside `1..=max` before reading
/// (or allocating for) the payload.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, FrameError> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len == 0 || len > max {
                return Err(FrameError::Length { len, max });
            }
            if buf.len() >= 4 + len {
                buf.advance(4);
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(4 + len - buf.len());
        } else if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            cluster: 7,
            from: 1,
            to: 2,
            client_addr: "127.0.0.1:7070".into(),
        };
        let mut f = encode_hello(&h);
        f.advance(4);
        assert_eq!(decode_hello(f.freeze()).unwrap(), h);
        for r in [
            HelloReply::Accepted {
                client_addr: "x:1".into(),
            },
            HelloReply::Refused {
                reason: "wrong cluster".into(),
            },
        ] {
            let mut f = encode_reply(&r);
            f.advance(4);
            assert_eq!(decode_reply(f.freeze()).unwrap(), r);
        }
    }

    #[test]
    fn garbage_hello_is_refused() {
        assert!(decode_hello(Bytes::from_static(b"GET / HTTP/1.1\r\n")).is_err());
        let mut f = encode_hello(&Hello {
            cluster: 1,
            from: 1,
            to: 2,
            client_addr: "a".into(),
        });
        f.advance(4);
        let mut v = f.to_vec();
        v.truncate(v.len() - 1);
        assert!(decode_hello(Bytes::from(v)).is_err());
    }

    #[tokio::test]
    async fn frames_are_bounded() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut data, &mut buf, MAX_FRAME).await,
            Err(FrameError::Length { .. })
        ));
        let mut data: &[u8] = &[2, 0, 0, 0, 9, 8, 1, 0, 0, 0, 7];
        let mut buf = BytesMut::new();
        assert_eq!(
            &read_frame(&mut data, &mut buf, 16).await.unwrap()[..],
            &[9, 8]
        );
        assert_eq!(
            &read_frame(&mut data, &mut buf, 16).await.unwrap()[..],
            &[7]
        );
        assert!(matches!(
            read_frame(&mut data, &mut buf, 16).await,
            Err(FrameError::Closed)
        ));
    }
}
