//! Accepted connections: a bounded number, each with a stall limit on
//! writes and an idle limit on reads.
//!
//! A response is written as fast as the client reads it. A client that
//! stops reading a long response (an export) would otherwise hold its
//! connection, its slots in flight and a page of memories in this process
//! for as long as it likes: the server's writes simply wait. Such a wait is
//! invisible to the response body (nothing polls it while the socket is
//! full), so the limit sits on the socket itself: a write that makes no
//! progress for the stall limit fails, which ends the connection and drops
//! the response with everything it holds. Likewise a read that waits for
//! the idle limit with nothing written meanwhile (a kept-alive connection
//! nobody uses, a client that opened one and sent nothing) ends it.
//!
//! The listener holds at most `max` connections (beyond, new ones wait in
//! the kernel's queue) and at most `per_address` from one client address
//! (an IPv6 address by its /64; trusted proxies are exempt), so that no one
//! can take every file descriptor the engine needs.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::access::lockout::Principal;
use crate::auth::client::TrustedProxies;

/// What each connection may do, and how many there may be.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest a write may wait for the client to read.
    pub stall: Duration,
    /// Longest a read may wait with nothing written meanwhile.
    pub idle: Duration,
    /// Most connections open at once.
    pub max: usize,
    /// Most connections open at once from one client address.
    pub per_address: usize,
}

/// Open connections per client address.
type ByAddress = Arc<Mutex<HashMap<Principal, usize>>>;

/// A TCP listener whose connections are counted and time-limited.
pub struct StallListener {
    inner: TcpListener,
    limits: ConnectionLimits,
    // Exempt from the per-address share: they carry many clients.
    proxies: TrustedProxies,
    open: Arc<Semaphore>,
    by_address: ByAddress,
}

impl StallListener {
    /// Wraps `inner` with `limits`; `proxies` are exempt from the
    /// per-address share.
    pub fn new(inner: TcpListener, limits: ConnectionLimits, proxies: TrustedProxies) -> Self {
        Self {
            inner,
            proxies,
            open: Arc::new(Semaphore::new(limits.max.max(1))),
            limits,
            by_address: Arc::default(),
        }
    }
}

/// The address a connection came from, as the request extractors see it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A connection's places: one of all connections, one of its address's.
struct Counted {
    _open: OwnedSemaphorePermit,
    address: Option<(Principal, ByAddress)>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((who, table)) = self.address.take() {
            let mut table = table.lock();
            if let Some(n) = table.get_mut(&who) {
                *n -= 1;
                if *n == 0 {
                    table.remove(&who);
                }
            }
        }
    }
}

impl Listener for StallListener {
    type Io = StallLimited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let open = self
                .open
                .clone()
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            let (io, addr) = Listener::accept(&mut self.inner).await;
            let address = if self.proxies.trusts(addr.ip()) {
                None
            } else {
                let who = Principal::client(addr.ip());
                let mut table = self.by_address.lock();
                let n = table.entry(who.clone()).or_insert(0);
                if *n >= self.limits.per_address {
                    // Closed at once: this address holds its share already.
                    tracing::debug!("refused a connection over its address's share");
                    continue;
                }
                *n += 1;
                Some((who, self.by_address.clone()))
            };
            let counted = Counted {
                _open: open,
                address,
            };
            return (StallLimited::new(io, &self.limits, counted), addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, StallListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, StallListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// An I/O stream whose writes fail once one has waited for `stall`, and
/// whose reads fail once one has waited for `idle` with nothing written.
pub struct StallLimited<T> {
    inner: T,
    stall: Duration,
    idle: Duration,
    // Armed when a write first has to wait, disarmed by a write's progress.
    writing: Option<Pin<Box<Sleep>>>,
    // Armed when a read first has to wait, disarmed by any progress.
    reading: Option<Pin<Box<Sleep>>>,
    _counted: Option<Counted>,
}

impl<T> StallLimited<T> {
    fn new(inner: T, limits: &ConnectionLimits, counted: Counted) -> Self {
        Self {
            inner,
            stall: limits.stall,
            idle: limits.idle,
            writing: None,
            reading: None,
            _counted: Some(counted),
        }
    }

    /// A stream with these limits and no connection count.
    #[cfg(test)]
    fn uncounted(inner: T, stall: Duration, idle: Duration) -> Self {
        Self {
            inner,
            stall,
            idle,
            writing: None,
            reading: None,
            _counted: None,
        }
    }
}

/// Turns a pending operation into an error once `timer` (armed now for
/// `limit` if it is not yet) has run out; passes every other outcome through.
fn limit<R>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    poll: Poll<io::Result<R>>,
    what: &'static str,
) -> Poll<io::Result<R>> {
    if poll.is_ready() {
        *timer = None;
        return poll;
    }
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    ready!(sleep.as_mut().poll(cx));
    *timer = None;
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
}

const STALLED: &str = "the client read nothing for the stall limit";
const IDLE: &str = "the connection was idle for the idle limit";

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        limit(&mut this.reading, this.idle, cx, poll, IDLE)
    }
}

impl<T: AsyncWrite + Unpin> StallLimited<T> {
    fn wrote<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            // Progress: a read waiting meanwhile is no idle connection.
            self.reading = None;
        }
        limit(&mut self.writing, self.stall, cx, poll, STALLED)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.wrote(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_stall_limit() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut limited =
            StallLimited::uncounted(near, Duration::from_millis(50), Duration::from_secs(60));
        let started = std::time::Instant::now();
        let result = limited.write_all(&[7u8; 64 * 1024]).await;
        let error = result.expect_err("the peer never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_limit() {
        use tokio::io::AsyncReadExt as _;
        let (near, _far) = tokio::io::duplex(1024);
        let mut limited =
            StallLimited::uncounted(near, Duration::from_secs(60), Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let error = limited
            .read(&mut buf)
            .await
            .expect_err("nothing ever arrives");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        use tokio::io::AsyncReadExt as _;
        let (near, mut far) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 64];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                total += far.read(&mut sink).await.expect("reads");
            }
            total
        });
        // Each wait (about 10 ms) is far shorter than the limit, the whole
        // write (about 2.5 s) far longer.
        let mut limited =
            StallLimited::uncounted(near, Duration::from_millis(500), Duration::from_secs(60));
        limited
            .write_all(&[7u8; 16 * 1024])
            .await
            .expect("progress keeps the limit off");
        assert!(reader.await.expect("joins") >= 16 * 1024);
    }
}
