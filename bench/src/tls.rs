//! wss:// for the generator: a rustls client session (ring provider) over a monoio socket.
//!
//! The session lives in an `Rc<RefCell<_>>` that is only ever borrowed between awaits, so a
//! connection can be split into a reading and a writing task (`room`) that share it: the socket
//! halves carry ciphertext, the session turns it into plaintext and back. Plain `ws://`
//! connections never touch this module (see `stream.rs`).

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::BufResult;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// Ciphertext read per socket read: one full TLS record (16 KiB + header and tag) and more.
const READ_CHUNK: usize = 18 * 1024;

/// What every wss:// connection of a run is made with.
#[derive(Clone)]
pub struct TlsClient {
    /// Roots, provider, and the session cache (shared by every connection when resuming).
    pub config: Arc<ClientConfig>,
    /// The name the certificate must be valid for (the URL's IP address).
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the PEM certificates in `ca` as roots. `resume`: connections share
    /// the config's in-memory session cache, so a handshake after the first ones presents a
    /// ticket (TLS 1.3) or session id (TLS 1.2); otherwise every handshake is a full one.
    pub fn new(ca: &Path, resume: bool, name: ServerName<'static>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca {}: no certificate in it", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = match resume {
            true => Resumption::store(Arc::new(crate::tickets::TicketPool::default())),
            false => Resumption::disabled(),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }
}

/// A TLS session over `io` (a socket, or one half of it).
pub struct Tls<IO> {
    io: IO,
    session: Rc<RefCell<ClientConnection>>,
    /// Ciphertext read from the socket; `rbuf[rpos..]` is not yet given to the session (it
    /// holds at most 16 KiB of plaintext, so a large read is fed in steps as it is read).
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext to write to the socket.
    wbuf: Vec<u8>,
}

impl<IO> Tls<IO> {
    /// The transport under the session.
    pub fn io(&self) -> &IO {
        &self.io
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.session.borrow().handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The same session over the two halves of the socket (`split` of `io`).
    pub fn split<R, W>(self, split: impl FnOnce(IO) -> (R, W)) -> (Tls<R>, Tls<W>) {
        let (r, w) = split(self.io);
        let reader = Tls {
            io: r,
            session: self.session.clone(),
            rbuf: self.rbuf,
            rpos: self.rpos,
            wbuf: Vec::new(),
        };
        let writer = Tls {
            io: w,
            session: self.session,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: self.wbuf,
        };
        (reader, writer)
    }

    /// Moves the plaintext the session holds into `buf`: `None` when it needs more ciphertext.
    fn take_plaintext<T: IoBufMut>(&self, buf: &mut T) -> Option<io::Result<usize>> {
        let room = buf.bytes_total();
        if room == 0 {
            return Some(Ok(0));
        }
        let mut s = self.session.borrow_mut();
        let available = match s.reader().into_first_chunk() {
            // Empty and no error: the peer sent close_notify.
            Ok(chunk) => chunk.len(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Err(e)),
        };
        let n = available.min(room);
        if n == 0 {
            return Some(Ok(0));
        }
        // SAFETY: `write_ptr` is valid for `bytes_total` (>= n) bytes, which are zeroed before
        // the slice is formed, so the slice covers initialised memory; `buf` is borrowed
        // mutably for the whole block, so nothing else aliases it.
        let got = unsafe {
            buf.write_ptr().write_bytes(0, n);
            let dst = std::slice::from_raw_parts_mut(buf.write_ptr(), n);
            s.reader().read(dst)
        };
        if let Ok(got) = got {
            // SAFETY: `got` <= n bytes were written just above.
            unsafe { buf.set_init(got) };
        }
        Some(got)
    }

    /// Encrypts everything the session has to send into `wbuf`.
    fn drain_session(&mut self) -> io::Result<()> {
        let mut s = self.session.borrow_mut();
        while s.wants_write() {
            s.write_tls(&mut self.wbuf)?;
        }
        Ok(())
    }
}

impl<IO: AsyncReadRent> Tls<IO> {
    /// Gives the session ciphertext: what is left of the last socket read, else one more socket
    /// read. Returns 0 when the peer closed TCP, else how much the session took. Called only
    /// when the session holds no plaintext.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.rpos == self.rbuf.len() {
            let mut rbuf = std::mem::take(&mut self.rbuf);
            rbuf.clear();
            rbuf.reserve(READ_CHUNK);
            self.rpos = 0;
            let (res, rbuf) = self.io.read(rbuf).await;
            self.rbuf = rbuf;
            if res? == 0 {
                // Tells the session the transport ended: its reader then reports EOF.
                self.session.borrow_mut().read_tls(&mut &[][..])?;
                return Ok(0);
            }
        }
        let mut s = self.session.borrow_mut();
        let start = self.rpos;
        // Until the session has plaintext to give: `read_tls` refuses more once it holds its
        // limit, so the rest waits here for the next call.
        while self.rpos < self.rbuf.len() {
            let taken = s.read_tls(&mut &self.rbuf[self.rpos..])?;
            self.rpos += taken;
            let state = s
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if taken == 0 || state.plaintext_bytes_to_read() > 0 {
                break;
            }
        }
        Ok((self.rpos - start).max(1))
    }
}

impl<IO: AsyncWriteRent> Tls<IO> {
    /// Writes the ciphertext in `wbuf` to the socket.
    async fn flush_tls(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.wbuf);
        let (res, mut out) = self.io.write_all(out).await;
        out.clear();
        self.wbuf = out;
        res.map(|_| ())
    }
}

impl<IO: AsyncReadRent + AsyncWriteRent> Tls<IO> {
    /// Runs the client handshake over `io` to completion.
    pub async fn connect(io: IO, client: &TlsClient) -> io::Result<Self> {
        let mut session = ClientConnection::new(client.config.clone(), client.name.clone())
            .map_err(io::Error::other)?;
        // Everything written is sealed and sent at once, so no plaintext limit is needed.
        session.set_buffer_limit(None);
        let mut tls = Tls {
            io,
            session: Rc::new(RefCell::new(session)),
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
        };
        loop {
            tls.drain_session()?;
            tls.flush_tls().await?;
            if !tls.session.borrow().is_handshaking() {
                break;
            }
            if tls.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
        }
        // An idle connection holds no read buffer (unless the server's first records came with
        // its last handshake flight); the first read allocates it again.
        if tls.rpos == tls.rbuf.len() {
            tls.rbuf = Vec::new();
            tls.rpos = 0;
        }
        Ok(tls)
    }
}

impl<IO: AsyncReadRent> AsyncReadRent for Tls<IO> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        loop {
            if let Some(res) = self.take_plaintext(&mut buf) {
                return (res, buf);
            }
            match self.fill().await {
                // The session now reports either more plaintext or the end.
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: `buf` is owned here and outlives `raw`, which points into its first iovec.
        let Some(raw) = (unsafe { RawBuf::new_from_iovec_mut(&mut buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.read(raw).await;
        if let Ok(n) = res {
            // SAFETY: `n` bytes of the first iovec were just written.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl<IO: AsyncWriteRent> AsyncWriteRent for Tls<IO> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let len = buf.bytes_init();
        // SAFETY: `read_ptr` is valid for `bytes_init` initialised bytes while `buf` is owned.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), len) };
        let sealed = self.session.borrow_mut().writer().write_all(src);
        let sealed = sealed.and_then(|()| self.drain_session());
        if let Err(e) = sealed {
            return (Err(e), buf);
        }
        match self.flush_tls().await {
            Ok(()) => (Ok(len), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `buf` is owned here and outlives `raw`, which points into its first iovec.
        let Some(raw) = (unsafe { RawBuf::new_from_iovec(&buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.write(raw).await;
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.drain_session()?;
        self.flush_tls().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.borrow_mut().send_close_notify();
        self.flush().await?;
        self.io.shutdown().await
    }
}
