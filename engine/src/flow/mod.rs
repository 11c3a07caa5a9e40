//! Flow control: per-connection send queues and their accounting, per-topic policies, the
//! topic table and the memory ceiling.

pub mod governor;
// Isolation (issue 12): start-up consistency of the size limits.
pub mod limits;
pub mod policy;
pub mod queue;
pub mod topic;
