//! The transport under the replication connection: TCP, Unix socket or TLS
//! over TCP, with the SSLRequest negotiation, plus the buffered frame reader
//! ([`Wire`]) that every later phase (auth, queries, streaming) reads from.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::frame::{self, Frame};
use super::stream::{ReceiveBuffer, SAME_HOST_RECEIVE_BUFFER};
use super::tls;
use crate::conn::{unix_socket_path, Host, PgConnectOptions, SslMode};
use crate::error::SourceError;

/// Bytes reserved per read. Large reads keep syscalls few at high message
/// rates; frames split from the buffer keep their part of it alive.
const READ_CHUNK: usize = 256 * 1024;
/// Reserve a new chunk when less than this is free.
const MIN_FREE: usize = 32 * 1024;

/// A connected byte stream.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Socket {
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens the socket and negotiates TLS per `opts.sslmode` (Unix sockets
/// never use TLS, as in libpq). No timeout here: the caller bounds the
/// whole connect.
///
/// `receive_buffer`: `SO_RCVBUF` for a TCP socket, set before it connects
/// (the window scale is agreed on in the handshake: a buffer shrunk later
/// can no longer hold the window already advertised, and the kernel drops
/// what does not fit). [`ReceiveBuffer::Auto`] sets
/// [`SAME_HOST_RECEIVE_BUFFER`] for a loopback address only.
/// Returns the socket and whether `SO_RCVBUF` was set.
pub(crate) async fn connect_socket(opts: &PgConnectOptions, receive_buffer: ReceiveBuffer) -> Result<(Socket, bool), SourceError> {
    let endpoint = opts.endpoint();
    let unreachable = |e: io::Error| SourceError::transient(format!("cannot connect to PostgreSQL at {endpoint}: {e}"));
    match &opts.host {
        Host::Unix(dir) => Ok((Socket::Unix(UnixStream::connect(unix_socket_path(dir, opts.port)).await.map_err(unreachable)?), false)),
        Host::Tcp(host) => {
            // Build the TLS config first so bad CA/cert files fail before any I/O.
            let tls = match opts.sslmode {
                SslMode::Disable => None,
                mode => Some((tls::client_config(mode, &opts.tls)?, tls::server_name(mode, host)?)),
            };
            let (tcp, sized) = connect_tcp(host, opts.port, receive_buffer).await.map_err(unreachable)?;
            tcp.set_nodelay(true).map_err(unreachable)?;
            match tls {
                None => Ok((Socket::Tcp(tcp), sized)),
                Some((config, name)) => Ok((negotiate_tls(tcp, config, name, opts).await?, sized)),
            }
        }
    }
}

/// Connects to the addresses `host` resolves to, in turn (as
/// `TcpStream::connect` does), with `SO_RCVBUF` set first where
/// `receive_buffer` asks for it (and says whether it did).
async fn connect_tcp(host: &str, port: u16, receive_buffer: ReceiveBuffer) -> io::Result<(TcpStream, bool)> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let size = match receive_buffer {
            ReceiveBuffer::Kernel => None,
            ReceiveBuffer::Bytes(n) => Some(n),
            ReceiveBuffer::Auto => addr.ip().is_loopback().then_some(SAME_HOST_RECEIVE_BUFFER),
        };
        let attempt = async {
            let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let Some(n) = size {
                sock.set_recv_buffer_size(u32::try_from(n).unwrap_or(u32::MAX))?;
            }
            sock.connect(addr).await
        };
        match attempt.await {
            Ok(tcp) => return Ok((tcp, size.is_some())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} resolves to no address"))))
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    opts: &PgConnectOptions,
) -> Result<Socket, SourceError> {
    let mut req = BytesMut::with_capacity(8);
    postgres_protocol::message::frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if opts.sslmode == SslMode::Prefer => return Ok(Socket::Tcp(tcp)),
        b'N' => {
            return Err(SourceError::permanent(format!(
                "PostgreSQL at {} does not accept TLS but sslmode={}: set ssl = on on the server, or use sslmode=prefer/disable",
                opts.endpoint(),
                opts.sslmode.as_str()
            )))
        }
        other => return Err(SourceError::transient(format!("unexpected answer {other:#x} to the TLS request from {}", opts.endpoint()))),
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Socket::Tls(Box::new(s))),
        Err(e) => {
            // A rustls error (certificate rejected, no common protocol) is a
            // configuration problem; anything else is the network.
            let is_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
            let msg = format!("TLS handshake with PostgreSQL at {} failed (sslmode={}): {e}", opts.endpoint(), opts.sslmode.as_str());
            if is_tls {
                Err(SourceError::permanent(format!("{msg}; check the CA file and sslmode")))
            } else {
                Err(SourceError::transient(msg))
            }
        }
    }
}

/// A socket with a read buffer that yields whole frames and a write buffer.
pub(crate) struct Wire {
    pub socket: Socket,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// `SO_RCVBUF` was set at connect ([`connect_socket`]).
    receive_buffer_set: bool,
}

impl Wire {
    /// `receive_buffer_set`: [`connect_socket`] set `SO_RCVBUF` on it.
    pub fn new(socket: Socket, receive_buffer_set: bool) -> Self {
        Wire { socket, rbuf: BytesMut::with_capacity(READ_CHUNK), wbuf: BytesMut::with_capacity(1024), receive_buffer_set }
    }

    /// Reads once into the buffer (cancel-safe: a cancelled read consumed
    /// nothing) and returns how many bytes came. EOF is a Transient error.
    pub async fn fill(&mut self) -> Result<usize, SourceError> {
        self.make_room();
        match self.socket.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(SourceError::connection_closed()),
            Ok(n) => Ok(n),
            Err(e) => Err(SourceError::transient(format!("reading from PostgreSQL: {e}"))),
        }
    }

    /// Moves what is buffered to a fresh buffer, so that the allocation of
    /// the large frames split off before is freed with them.
    pub fn detach(&mut self) {
        let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(self.rbuf.len()));
        fresh.extend_from_slice(&self.rbuf);
        self.rbuf = fresh;
    }

    fn make_room(&mut self) {
        let missing = frame::missing_bytes(&self.rbuf);
        let free = self.rbuf.capacity() - self.rbuf.len();
        if missing > 0 && missing <= free && self.rbuf.len() >= READ_CHUNK {
            // The rest of a large frame being read fits. Growing now would
            // double its buffer (a copy of hundreds of MB for one big
            // value) to read its last few kB.
            return;
        }
        let want = missing.max(MIN_FREE);
        if free < want {
            self.rbuf.reserve(want.max(READ_CHUNK));
        }
    }

    /// Whether [`Wire::read_now`] and [`Wire::set_wake_threshold`] work:
    /// plain TCP only (TLS must read through its session, and Unix sockets
    /// do not honour `SO_RCVLOWAT` in poll).
    pub fn can_coalesce(&self) -> bool {
        matches!(self.socket, Socket::Tcp(_))
    }

    /// `SO_RCVBUF` as the kernel reports it (twice what was asked: half is
    /// its bookkeeping) when it was set at connect, i.e. not autotuned;
    /// `None` when the kernel sizes the buffer (or not TCP).
    pub fn receive_buffer(&self) -> Option<usize> {
        let tcp = match &self.socket {
            Socket::Tcp(tcp) => tcp,
            Socket::Tls(tls) => tls.get_ref().0,
            Socket::Unix(_) => return None,
        };
        self.receive_buffer_set.then(|| socket2::SockRef::from(tcp).recv_buffer_size().ok()).flatten()
    }

    /// How many queued bytes wake a reader waiting in [`Wire::fill`]
    /// (`SO_RCVLOWAT`; 1 is the kernel's default). Plain TCP only.
    pub fn set_wake_threshold(&mut self, bytes: usize) -> Result<(), SourceError> {
        match &self.socket {
            Socket::Tcp(tcp) => super::rawsock::set_rcvlowat(tcp, bytes)
                .map_err(|e| SourceError::transient(format!("setting SO_RCVLOWAT on the PostgreSQL connection: {e}"))),
            _ => Ok(()),
        }
    }

    /// Reads what the kernel has queued now, without waiting and whether or
    /// not anything woke us: `Ok(None)` when nothing is queued (or the
    /// socket is not plain TCP). EOF is a Transient error.
    pub fn read_now(&mut self) -> Result<Option<usize>, SourceError> {
        self.make_room();
        let Socket::Tcp(tcp) = &self.socket else { return Ok(None) };
        match super::rawsock::recv_now(tcp, &mut self.rbuf) {
            Ok(Some(0)) => Err(SourceError::connection_closed()),
            Ok(n) => Ok(n),
            Err(e) => Err(SourceError::transient(format!("reading from PostgreSQL: {e}"))),
        }
    }

    /// The next complete frame, reading as needed.
    pub async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(f) = frame::split_frame(&mut self.rbuf)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Writes and flushes `wbuf`, then clears it. Not cancel-safe (a
    /// cancelled write may leave half a message on the wire).
    pub async fn send(&mut self) -> Result<(), SourceError> {
        let res = async {
            self.socket.write_all(&self.wbuf).await?;
            self.socket.flush().await
        }
        .await;
        self.wbuf.clear();
        res.map_err(|e| SourceError::transient(format!("writing to PostgreSQL: {e}")))
    }
}
