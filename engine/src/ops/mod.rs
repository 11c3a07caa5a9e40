//! Operations: what the host offers against what the configuration needs.

pub mod capacity;
pub mod host;
pub mod preflight;
