//! The receive loop shared by `fanout`'s subscribers and `room`'s clients: scan what is
//! buffered, answer pings where the stream can write, read more, until the stream ends.

use crate::scan::{End, Scanner};
use crate::stream::{ReadHalf, Stream};
use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Free buffer space kept for each read.
const READ_BUF: usize = 16 * 1024;

/// A stream the loop reads from, and what it does with the pongs the scanner queued.
pub(crate) trait Wire: AsyncReadRent {
    /// Sends or discards `pongs`, leaving it empty.
    async fn answer(&mut self, pongs: &mut BytesMut) -> io::Result<()>;
}

impl Wire for Stream {
    async fn answer(&mut self, pongs: &mut BytesMut) -> io::Result<()> {
        if pongs.is_empty() {
            return Ok(());
        }
        self.write_all(pongs.split().freeze()).await.0.map(|_| ())
    }
}

impl Wire for ReadHalf {
    async fn answer(&mut self, pongs: &mut BytesMut) -> io::Result<()> {
        // The write half belongs to the sending task, so pings go unanswered; drop the pongs.
        pongs.clear();
        Ok(())
    }
}

/// Reads `stream` until it ends, starting with the bytes already in `buf`; `scan` is called
/// with everything buffered and returns how much it consumed (normally `scanner.scan(..)`).
/// Returns why the stream ended, or `None` when it ended because `stop` was set.
pub(crate) async fn receive<S: Wire>(
    stream: &mut S,
    mut buf: Vec<u8>,
    scanner: &mut Scanner,
    stop: &AtomicBool,
    mut scan: impl FnMut(&mut Scanner, &[u8]) -> Result<usize, End>,
) -> Option<String> {
    buf.reserve(READ_BUF);
    loop {
        match scan(scanner, &buf) {
            Ok(used) => {
                buf.drain(..used);
            }
            Err(e) => return Some(format!("{e:?}")),
        }
        if let Err(e) = stream.answer(&mut scanner.pongs).await {
            return Some(format!("pong: {e}"));
        }
        if buf.capacity() - buf.len() < READ_BUF / 2 {
            buf.reserve(READ_BUF);
        }
        let len = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        let end = match res {
            Ok(0) => "server closed the connection".to_string(),
            Ok(_) => continue,
            Err(e) => e.to_string(),
        };
        // A read ended by the shutdown at stop is not a failure.
        return (!stop.load(Ordering::Acquire)).then_some(end);
    }
}
