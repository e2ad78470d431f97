//! The body of `EntryKind::Command` entries: control entries (they take no
//! user offsets) that the hosting layer replicates for itself or for the
//! state machine.
//!
//! ```text
//! Command entry body, little-endian
//!   0   1  target   0 = the node library, 1 = the state machine
//!   1   .  payload  target 1: opaque, handed to StateMachine::apply_control
//!                   target 0: u8 op, then the op's fields:
//!                     op 1, set the preferred leader: u64 node id (0 = none)
//! ```
//!
//! An entry this build cannot decode stops the group rather than being
//! skipped: skipping a command a newer build wrote would make this node's
//! state differ from the others'.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use keel_raft::NodeId;

const TARGET_LIBRARY: u8 = 0;
const TARGET_STATE_MACHINE: u8 = 1;
const OP_PREFERRED_LEADER: u8 = 1;

/// A decoded command entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    /// The group's preferred leader (`None`: no preference).
    PreferredLeader(Option<NodeId>),
    /// For the state machine.
    StateMachine(Bytes),
}

impl CommandBody {
    /// Encodes the entry body.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            CommandBody::PreferredLeader(id) => {
                b.put_u8(TARGET_LIBRARY);
                b.put_u8(OP_PREFERRED_LEADER);
                b.put_u64_le(id.unwrap_or(keel_raft::NONE));
            }
            CommandBody::StateMachine(payload) => {
                b.put_u8(TARGET_STATE_MACHINE);
                b.put_slice(payload);
            }
        }
        b.freeze()
    }

    /// Decodes an entry body; a body this build does not know is an error.
    pub fn decode(body: Bytes) -> Result<CommandBody, String> {
        let mut b = &body[..];
        if b.is_empty() {
            return Err("empty command entry".into());
        }
        match b.get_u8() {
            TARGET_STATE_MACHINE => Ok(CommandBody::StateMachine(body.slice(1..))),
            TARGET_LIBRARY => {
                if b.is_empty() {
                    return Err("library command without an operation".into());
                }
                match b.get_u8() {
                    OP_PREFERRED_LEADER if b.len() == 8 => {
                        let id = b.get_u64_le();
                        Ok(CommandBody::PreferredLeader((id != 0).then_some(id)))
                    }
                    OP_PREFERRED_LEADER => {
                        Err("preferred-leader command of the wrong length".into())
                    }
                    op => Err(format!(
                        "library command {op} is unknown to this build (written by a newer keel?)"
                    )),
                }
            }
            t => Err(format!(
                "command entry for target {t}, unknown to this build (written by a newer keel?)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_unknown_ones_are_refused() {
        for c in [
            CommandBody::PreferredLeader(Some(3)),
            CommandBody::PreferredLeader(None),
            CommandBody::StateMachine(Bytes::from_static(b"truncate")),
            CommandBody::StateMachine(Bytes::new()),
        ] {
            assert_eq!(CommandBody::decode(c.encode()).unwrap(), c);
        }
        for bad in [&[][..], &[0], &[0, 99], &[0, 1, 1, 2], &[7, 1]] {
            assert!(CommandBody::decode(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
