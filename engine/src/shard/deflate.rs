//! The shard's permessage-deflate glue (the decisions are in `crate::deflate`, the protocol in
//! `shardcast_proto::deflate`): interest notices when compressing subscribers come and go,
//! the delivery counters, inbound inflation and compressed echo replies. The core calls these
//! from a few commented lines in `input.rs`, `fanout.rs` and `mesh.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::deflate::Agreed;
use shardcast_proto::{encode_close, encode_frame, MessageKind, OpCode};

use crate::conn::state::flag;
use crate::deflate::interest::Variant;
use crate::deflate::Negotiated;
use crate::mesh::{Envelope, MeshItem};
use crate::obs::stats;
use crate::runtime::driver::ConnId;
use crate::shard::{Core, State};

impl Core {
    /// A compressed message arrived on `id`: inflate it into the shard's buffer (lent out: the
    /// caller gives it back with `ShardDeflate::recycle`), the connection's message limit
    /// enforced while inflating. `None`: it went over the limit (1009, as soon as it does), or
    /// the data was corrupt or the text not UTF-8 (1007): counted, and the connection is
    /// closing.
    pub(crate) fn inflate_message(
        &mut self,
        id: ConnId,
        kind: MessageKind,
        compressed: &[u8],
    ) -> Option<Vec<u8>> {
        let st = &mut self.st;
        // The limit a plain message of this connection has (`handle_ws_input`'s decoder).
        let limit = if st.conns.get(id)?.is_subscriber() {
            st.config.max_control_message_bytes
        } else {
            st.config.max_message_bytes
        };
        let stats = &st.all_stats[st.id].compression;
        match st.deflate.inflate(kind, compressed, limit, stats) {
            Ok(out) => Some(out),
            Err(e) => {
                st.stats().protocol_error(e.code.0);
                st.close_with_bytes(id.slot, encode_close(e.code, e.reason));
                None
            }
        }
    }
}

impl State {
    /// The handshake's permessage-deflate agreement for `id` (set before it subscribes:
    /// compressing readers are counted per topic), and the connections gauge.
    pub fn deflate_agreed(&mut self, id: ConnId, agreed: Option<Agreed>) {
        let n = Negotiated::of(agreed);
        if let (Some(c), true) = (self.conns.get_mut(id), n.is_on()) {
            c.deflate = n;
            self.deflate_connection(true);
        }
    }

    /// A subscriber (`slot`) of `topic` joined (`on`) or is leaving: if it negotiated
    /// permessage-deflate and that changes this shard's interest in the topic's compressed
    /// variant it reads, tell every other participant (`deflate::interest`).
    pub fn deflate_interest(&mut self, slot: u32, topic: &Arc<str>, on: bool) {
        let Some(c) = self.conns.at(slot).filter(|c| c.deflate.is_on()) else {
            return;
        };
        let stream = c.has(flag::STREAM);
        if let Some(variant) = self.deflate.subscription(topic, stream, on) {
            self.deflate_topics_gauge();
            self.notify(|| MeshItem::Deflate {
                topic: topic.clone(),
                variant,
                on,
            });
        }
    }

    /// Another shard's interest in `topic`'s compressed `variant` changed.
    pub fn deflate_remote(&mut self, topic: &Arc<str>, variant: Variant, on: bool) {
        self.deflate.remote(topic, variant, on);
        self.deflate_topics_gauge();
    }

    fn deflate_topics_gauge(&self) {
        let n = self.deflate.topics() as u64;
        self.stats().compression.topics.store(n, Relaxed);
    }

    /// A connection that negotiated permessage-deflate opened (`on`) or ended: the gauge.
    pub fn deflate_connection(&self, on: bool) {
        let c = &self.stats().compression.connections;
        if on {
            stats::add(c, 1);
        } else {
            stats::sub(c, 1);
        }
    }

    /// Count what `Core::deliver` queued of `env`'s compressed variants: `n[0]` compressed
    /// plain frames, `n[1]` compressed `/stream` wrappers, and the bytes they saved.
    pub fn count_compressed(&self, env: &Envelope, n: [u64; 2]) {
        let Some(d) = env.deflated.as_deref() else {
            return;
        };
        let saved = |plain: Option<&Bytes>, z: &Option<Bytes>| {
            plain.map_or(0, Bytes::len) - z.as_ref().map_or(0, Bytes::len)
        };
        let c = &self.stats().compression;
        c.delivered(n[0], saved(Some(&env.frame), &d.frame));
        c.delivered(n[1], saved(env.stream_frame.as_ref(), &d.stream_frame));
    }

    /// A frame of `slot`'s own (an echo reply): compressed for this connection when it
    /// negotiated permessage-deflate and it is worth it (echo is no broadcast), else plain.
    pub fn own_frame(&mut self, slot: u32, opcode: OpCode, payload: &[u8]) -> Bytes {
        let n = self.conns.at(slot).map(|c| c.deflate).unwrap_or_default();
        let stats = &self.all_stats[self.id].compression;
        self.deflate
            .encode_own(opcode, payload, n, stats)
            .unwrap_or_else(|| encode_frame(opcode, payload))
    }
}
