//! shardcast: the WebSocket broadcast server binary.
fn main() {}
