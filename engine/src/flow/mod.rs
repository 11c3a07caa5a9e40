//! Flow control: per-connection send queues and their accounting, per-topic policies, the
//! topic table and the memory ceiling.

pub mod governor;
pub mod policy;
pub mod queue;
pub mod topic;
