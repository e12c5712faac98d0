//! Accepted connections: every one gets a write-stall limit.
//!
//! A response is written as fast as the client reads it. A client that
//! stops reading a long response (an export) would otherwise hold its
//! connection, its slots in flight and a page of memories in this process
//! for as long as it likes: the server's writes simply wait. Such a wait is
//! invisible to the response body (nothing polls it while the socket is
//! full), so the limit sits on the socket itself: a write that makes no
//! progress for the stall limit fails, which ends the connection and drops
//! the response with everything it holds.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A TCP listener whose connections fail a write stalled past a limit.
pub struct StallListener {
    inner: TcpListener,
    stall: Duration,
}

impl StallListener {
    /// Wraps `inner`; writes that wait longer than `stall` fail.
    pub fn new(inner: TcpListener, stall: Duration) -> Self {
        Self { inner, stall }
    }
}

/// The address a connection came from, as the request extractors see it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Listener for StallListener {
    type Io = StallLimited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (StallLimited::new(io, self.stall), addr)
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

/// An I/O stream whose writes fail once one has waited for `stall`.
pub struct StallLimited<T> {
    inner: T,
    stall: Duration,
    // Armed when a write first has to wait, disarmed by any progress.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> StallLimited<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            waiting: None,
        }
    }

    /// Turns a pending write into an error once it has waited too long;
    /// passes every other outcome through.
    fn limit<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let stall = self.stall;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(timer.as_mut().poll(cx));
        self.waiting = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the stall limit",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.limit(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.limit(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.limit(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.limit(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_stall_limit() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut limited = StallLimited::new(near, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let result = limited.write_all(&[7u8; 64 * 1024]).await;
        let error = result.expect_err("the peer never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
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
        let mut limited = StallLimited::new(near, Duration::from_millis(500));
        limited
            .write_all(&[7u8; 16 * 1024])
            .await
            .expect("progress keeps the limit off");
        assert!(reader.await.expect("joins") >= 16 * 1024);
    }
}
