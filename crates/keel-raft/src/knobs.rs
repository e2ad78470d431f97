//! Switches that break a safety rule on purpose. They exist so tests can
//! show that the simulator's checkers notice each broken rule. They can only
//! be set with the `fault-injection` feature; all off by default.

#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub struct Knobs {
    /// Commit an entry of an earlier term by counting replicas (ignores the
    /// Figure 8 rule).
    pub commit_old_term: bool,
    /// Grant votes without checking the candidate's log is up to date.
    pub vote_without_log_check: bool,
    /// Send vote grants and append acknowledgements before the state they
    /// reveal is persisted.
    pub ack_before_persist: bool,
    /// Let a configuration take effect when its entry commits instead of
    /// when it is appended.
    pub apply_conf_at_commit: bool,
    /// Change voters in one step, without the joint configuration.
    pub skip_joint: bool,
}
