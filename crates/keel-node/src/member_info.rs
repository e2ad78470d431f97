//! What a configuration says about each member besides its role: where to
//! reach it and which data directory it runs on. Carried as the opaque
//! per-member info of keel-raft's `Membership`, so it lives in the log and
//! in snapshots with the configuration itself.
//!
//! ```text
//! Member info, little-endian
//!   0   1  version      1
//!   1   8  incarnation  u64; 0 = not yet known
//!   9   2  n            u16 (<= 512), then n bytes: the peer address, UTF-8
//!   .   2  m            u16 (<= 512), then m bytes: the client address, UTF-8
//! ```
//!
//! The incarnation is a random number a data directory gets when it is
//! created. A node presents it in every peer handshake; a member whose
//! configured incarnation is known and differs is refused: its data
//! directory was wiped or replaced, and an empty directory must not take
//! the place of one that acknowledged entries.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use keel_raft::{Membership, NodeId};

const VERSION: u8 = 1;
/// The longest address accepted, in bytes.
pub const MAX_ADDR_LEN: usize = 512;

/// A member's addresses and data-directory incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Random id of the member's data directory; 0 while not yet known.
    pub incarnation: u64,
    /// Where its peer transport listens (`HOST:PORT`).
    pub peer_addr: String,
    /// Where its client API listens, as it announced it (may be empty).
    pub client_addr: String,
}

impl MemberInfo {
    /// Encodes for `Membership::info`.
    pub fn encode(&self) -> Bytes {
        let peer = clip(&self.peer_addr);
        let client = clip(&self.client_addr);
        let mut b = BytesMut::with_capacity(13 + peer.len() + client.len());
        b.put_u8(VERSION);
        b.put_u64_le(self.incarnation);
        b.put_u16_le(peer.len() as u16);
        b.put_slice(peer.as_bytes());
        b.put_u16_le(client.len() as u16);
        b.put_slice(client.as_bytes());
        b.freeze()
    }

    /// Decodes; any malformed input is an error, never a panic.
    pub fn decode(mut b: &[u8]) -> Result<MemberInfo, String> {
        if b.len() < 9 {
            return Err("member info too short".into());
        }
        let v = b.get_u8();
        if v != VERSION {
            return Err(format!("member info version {v} (expected {VERSION})"));
        }
        let incarnation = b.get_u64_le();
        let peer_addr = text(&mut b, "peer address")?;
        let client_addr = text(&mut b, "client address")?;
        if !b.is_empty() {
            return Err("trailing bytes after member info".into());
        }
        Ok(MemberInfo {
            incarnation,
            peer_addr,
            client_addr,
        })
    }

    /// The fields of `announced` this record should take: a known
    /// incarnation where this one has none, and addresses that changed
    /// (empty announced addresses change nothing). `None` when nothing
    /// changes. A different known incarnation is not learned: that member
    /// is refused instead.
    pub fn learn(&self, announced: &MemberInfo) -> Option<MemberInfo> {
        let mut next = self.clone();
        if next.incarnation == 0 {
            next.incarnation = announced.incarnation;
        }
        if !announced.peer_addr.is_empty() {
            next.peer_addr = announced.peer_addr.clone();
        }
        if !announced.client_addr.is_empty() {
            next.client_addr = announced.client_addr.clone();
        }
        (next != *self).then_some(next)
    }
}

/// The info a configuration holds for `id`: default (nothing known) when it
/// holds none or an undecodable one.
pub fn info_of(m: &Membership, id: NodeId) -> MemberInfo {
    m.info
        .get(&id)
        .and_then(|b| MemberInfo::decode(b).ok())
        .unwrap_or_default()
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_ADDR_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn text(b: &mut &[u8], what: &str) -> Result<String, String> {
    if b.len() < 2 {
        return Err(format!("member info cut short before its {what}"));
    }
    let n = b.get_u16_le() as usize;
    if n > MAX_ADDR_LEN || n > b.len() {
        return Err(format!("member info {what} of {n} bytes"));
    }
    let s = std::str::from_utf8(&b[..n])
        .map_err(|_| format!("member info {what} is not UTF-8"))?
        .to_string();
    b.advance(n);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_info_round_trips_and_refuses_every_cut() {
        let m = MemberInfo {
            incarnation: 0xdead_beef,
            peer_addr: "10.0.0.1:7071".into(),
            client_addr: "10.0.0.1:7070".into(),
        };
        let b = m.encode();
        assert_eq!(MemberInfo::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(MemberInfo::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.to_vec();
        long.push(0);
        assert!(MemberInfo::decode(&long).is_err());
        let mut bad = b.to_vec();
        bad[0] = 9;
        assert!(MemberInfo::decode(&bad).is_err());
    }

    #[test]
    fn learning_fills_an_unknown_incarnation_and_new_addresses_only() {
        let known = MemberInfo {
            incarnation: 0,
            peer_addr: "a:1".into(),
            client_addr: String::new(),
        };
        let seen = MemberInfo {
            incarnation: 7,
            peer_addr: "a:1".into(),
            client_addr: "a:2".into(),
        };
        let next = known.learn(&seen).unwrap();
        assert_eq!(next, seen);
        assert_eq!(next.learn(&seen), None, "nothing new");
        let other = MemberInfo {
            incarnation: 8,
            ..seen.clone()
        };
        assert_eq!(
            next.learn(&other),
            None,
            "a known incarnation is not replaced"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678u64;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = MemberInfo::decode(&bytes);
        }
    }
}
