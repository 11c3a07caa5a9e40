//! A shard: its connections, topics and mesh end.

pub mod hub;
