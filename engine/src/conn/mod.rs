//! One client connection: routing, publish authorization, in-band control, heartbeats.

pub mod control;
pub mod heartbeat;
pub mod route;
pub mod task;
