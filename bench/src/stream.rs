//! A client connection's transport: the bare socket (`ws://`) or a TLS session over it
//! (`wss://`). Scenarios read and write through [`Transport`] and never ask which one it is;
//! for `ws://` the only extra work is one branch per read or write.

use crate::tls::Tls;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Either the plain transport `P` or the TLS one `T`.
pub enum Transport<P, T> {
    /// `ws://`.
    Plain(P),
    /// `wss://`.
    Tls(T),
}

/// A whole connection.
pub type Stream = Transport<TcpStream, Tls<TcpStream>>;
/// The reading half of a split [`Stream`].
pub type ReadHalf = Transport<OwnedReadHalf<TcpStream>, Tls<OwnedReadHalf<TcpStream>>>;
/// The writing half of a split [`Stream`].
pub type WriteHalf = Transport<OwnedWriteHalf<TcpStream>, Tls<OwnedWriteHalf<TcpStream>>>;

impl Stream {
    /// A reading and a writing half, for a receive task and a send task (`room`); a TLS
    /// session is shared by both.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Plain(s) => {
                let (r, w) = s.into_split();
                (Transport::Plain(r), Transport::Plain(w))
            }
            Transport::Tls(t) => {
                let (r, w) = t.split(Splitable::into_split);
                (Transport::Tls(r), Transport::Tls(w))
            }
        }
    }

    /// Whether this is a TLS connection whose handshake resumed a session.
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => Some(t.resumed()),
        }
    }

    /// The socket (for `shutdown(2)` and socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.io(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl<P: AsyncReadRent, T: AsyncReadRent> AsyncReadRent for Transport<P, T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Transport::Plain(s) => s.read(buf).await,
            Transport::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Transport::Plain(s) => s.readv(buf).await,
            Transport::Tls(s) => s.readv(buf).await,
        }
    }
}

impl<P: AsyncWriteRent, T: AsyncWriteRent> AsyncWriteRent for Transport<P, T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Transport::Plain(s) => s.write(buf).await,
            Transport::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Transport::Plain(s) => s.writev(buf).await,
            Transport::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush().await,
            Transport::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
        }
    }
}
