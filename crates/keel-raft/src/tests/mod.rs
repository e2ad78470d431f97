//! Scenario tests of the consensus core. `paper` follows the Raft paper's
//! rules one by one; the others cover keel's extensions.

mod harness;

mod election;
mod hosting;
mod input;
mod membership;
mod paper;
mod persistence;
mod reads;
mod replication;
mod snapshot;
mod transfer;
