//! One client connection: its state, and the pure decisions about it — admission at accept,
//! the request head and its route, the HTTP publish body, in-band control, heartbeats.

pub mod admission;
pub mod control;
pub mod heartbeat;
pub mod route;
pub mod state;
pub mod upgrade;
