//! Framing of the peer transport and the connection handshake.
//!
//! ```text
//! Frame, on every peer connection, in both directions
//!    0   4  length     u32 LE: bytes of payload that follow (1 ..= MAX_FRAME)
//!    4   .  payload    one raft message (keel_raft::codec), or a handshake
//!
//! Hello: the payload of the first frame the dialing node sends
//!    0   8  magic        "KEELPEER"
//!    8   2  version      u16 LE, PROTOCOL_VERSION (2)
//!   10   8  cluster      u64 LE, the sender's cluster id
//!   18   8  from         u64 LE, the sender's node id
//!   26   8  to           u64 LE, the node id the sender believes it dialed
//!   34   8  incarnation  u64 LE, the sender's data-directory incarnation
//!   42   2  n            u16 LE (<= 512), then n bytes: its client address
//!    .   2  m            u16 LE (<= 512), then m bytes: its peer address
//!
//! HelloReply: the payload of the only frame the accepting node sends
//!    0   8  magic        "KEELPEER"
//!    8   2  version      u16 LE, PROTOCOL_VERSION
//!   10   1  status       0 accepted, 1 refused
//!  accepted:
//!   11   8  incarnation  u64 LE, the acceptor's incarnation
//!   19   2  n            u16 LE (<= 512), then n bytes: its client address
//!    .   2  m            u16 LE (<= 512), then m bytes: its peer address
//!  refused:
//!   11   1  code         1 another cluster, 2 not a member, 3 another data
//!                        directory (incarnation), 4 wrong node, 0 other
//!   12   2  n            u16 LE (<= 512), then n bytes: the reason
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

/// The first bytes of every handshake.
pub const MAGIC: &[u8; 8] = b"KEELPEER";
/// The peer protocol this build speaks (both ends must).
pub const PROTOCOL_VERSION: u16 = 2;
/// The largest payload accepted: one maximal entry plus message overhead.
pub const MAX_FRAME: usize = keel_format::MAX_BATCH_LEN + (1 << 20);
/// Handshake frames are small.
pub const MAX_HELLO_FRAME: usize = 2048;
const MAX_TEXT: usize = 512;

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A length outside the bounds: refused before allocating.
    #[error("frame length {len} is outside 1..={max}")]
    Length {
        /// The length the frame claimed.
        len: usize,
        /// The largest accepted.
        max: usize,
    },
    /// A malformed handshake.
    #[error("bad handshake: {0}")]
    Handshake(String),
}

/// The dialer's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's cluster id.
    pub cluster: u64,
    /// The sender's node id.
    pub from: u64,
    /// The node the sender believes it dialed.
    pub to: u64,
    /// The sender's data-directory incarnation.
    pub incarnation: u64,
    /// The sender's client API address.
    pub client_addr: String,
    /// The sender's peer address.
    pub peer_addr: String,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// Anything else.
    Other = 0,
    /// The dialer belongs to another cluster.
    OtherCluster = 1,
    /// The dialer is not a member (removed, or not added yet).
    NotMember = 2,
    /// The dialer runs on another data directory than the cluster knows.
    Incarnation = 3,
    /// The dialer reached another node than it meant to.
    WrongNode = 4,
}

impl RefuseCode {
    fn from_u8(v: u8) -> RefuseCode {
        match v {
            1 => RefuseCode::OtherCluster,
            2 => RefuseCode::NotMember,
            3 => RefuseCode::Incarnation,
            4 => RefuseCode::WrongNode,
            _ => RefuseCode::Other,
        }
    }
}

/// The acceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    /// Accepted: who answered.
    Accepted {
        /// The acceptor's incarnation.
        incarnation: u64,
        /// The acceptor's client API address.
        client_addr: String,
        /// The acceptor's peer address.
        peer_addr: String,
    },
    /// Refused, with the reason for the dialer's log.
    Refused {
        /// The kind of refusal.
        code: RefuseCode,
        /// What to do about it.
        reason: String,
    },
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
    if n > MAX_TEXT || b.remaining() < n {
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

/// Encodes a hello as a whole frame.
pub fn encode_hello(h: &Hello) -> BytesMut {
    let mut p = BytesMut::with_capacity(64);
    p.put_slice(MAGIC);
    p.put_u16_le(PROTOCOL_VERSION);
    p.put_u64_le(h.cluster);
    p.put_u64_le(h.from);
    p.put_u64_le(h.to);
    p.put_u64_le(h.incarnation);
    put_text(&mut p, &h.client_addr);
    put_text(&mut p, &h.peer_addr);
    let mut out = BytesMut::with_capacity(p.len() + 4);
    put_frame(&mut out, &p);
    out
}

fn end(b: &Bytes, what: &str) -> Result<(), FrameError> {
    if b.has_remaining() {
        return Err(FrameError::Handshake(format!(
            "trailing bytes after the {what}"
        )));
    }
    Ok(())
}

/// Decodes a hello frame's payload.
pub fn decode_hello(mut b: Bytes) -> Result<Hello, FrameError> {
    check_magic(&mut b)?;
    if b.remaining() < 32 {
        return Err(FrameError::Handshake("hello cut short".into()));
    }
    let cluster = b.get_u64_le();
    let from = b.get_u64_le();
    let to = b.get_u64_le();
    let incarnation = b.get_u64_le();
    let client_addr = get_text(&mut b)?;
    let peer_addr = get_text(&mut b)?;
    end(&b, "hello")?;
    Ok(Hello {
        cluster,
        from,
        to,
        incarnation,
        client_addr,
        peer_addr,
    })
}

/// Encodes a reply as a whole frame.
pub fn encode_reply(r: &HelloReply) -> BytesMut {
    let mut p = BytesMut::with_capacity(64);
    p.put_slice(MAGIC);
    p.put_u16_le(PROTOCOL_VERSION);
    match r {
        HelloReply::Accepted {
            incarnation,
            client_addr,
            peer_addr,
        } => {
            p.put_u8(0);
            p.put_u64_le(*incarnation);
            put_text(&mut p, client_addr);
            put_text(&mut p, peer_addr);
        }
        HelloReply::Refused { code, reason } => {
            p.put_u8(1);
            p.put_u8(*code as u8);
            put_text(&mut p, reason);
        }
    }
    let mut out = BytesMut::with_capacity(p.len() + 4);
    put_frame(&mut out, &p);
    out
}

/// Decodes a reply frame's payload.
pub fn decode_reply(mut b: Bytes) -> Result<HelloReply, FrameError> {
    check_magic(&mut b)?;
    if b.remaining() < 1 {
        return Err(FrameError::Handshake("reply cut short".into()));
    }
    let reply = match b.get_u8() {
        0 => {
            if b.remaining() < 8 {
                return Err(FrameError::Handshake("reply cut short".into()));
            }
            let incarnation = b.get_u64_le();
            let client_addr = get_text(&mut b)?;
            let peer_addr = get_text(&mut b)?;
            HelloReply::Accepted {
                incarnation,
                client_addr,
                peer_addr,
            }
        }
        1 => {
            if b.remaining() < 1 {
                return Err(FrameError::Handshake("reply cut short".into()));
            }
            let code = RefuseCode::from_u8(b.get_u8());
            let reason = get_text(&mut b)?;
            HelloReply::Refused { code, reason }
        }
        s => return Err(FrameError::Handshake(format!("unknown reply status {s}"))),
    };
    end(&b, "reply")?;
    Ok(reply)
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
            incarnation: 99,
            client_addr: "127.0.0.1:7070".into(),
            peer_addr: "127.0.0.1:7071".into(),
        };
        let mut f = encode_hello(&h);
        f.advance(4);
        assert_eq!(decode_hello(f.freeze()).unwrap(), h);
        for r in [
            HelloReply::Accepted {
                incarnation: 5,
                client_addr: "x:1".into(),
                peer_addr: "x:2".into(),
            },
            HelloReply::Refused {
                code: RefuseCode::NotMember,
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
            incarnation: 3,
            client_addr: "a".into(),
            peer_addr: "b".into(),
        });
        f.advance(4);
        let v = f.to_vec();
        for cut in 0..v.len() {
            assert!(
                decode_hello(Bytes::copy_from_slice(&v[..cut])).is_err(),
                "cut {cut}"
            );
        }
        let mut long = v.clone();
        long.push(0);
        assert!(decode_hello(Bytes::from(long)).is_err());
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
