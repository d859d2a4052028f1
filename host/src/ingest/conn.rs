//! The only tokio code of ingest: accepts RTMP connections and drives a sans-IO
//! [`ServerSession`] per connection. What a publish becomes is the [`PublishHandler`]'s
//! business; this module never waits on it beyond a function call.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{PublishRequest, ServerSession, SessionEvent};
use crate::media::Frame;

/// Read buffer growth step. Frames are split off the read buffer as refcounted slices, so a
/// buffer is shared until its frames are written; a new one is started when this runs low.
const READ_CHUNK: usize = 32 * 1024;
/// Once a publish is accepted, the kernel wakes us only when this much media is waiting (or
/// at the fallback tick): a 500 kbit/s stream then costs a few reads a second, not one per
/// packet. Recording tolerates the added latency (at most one tick).
const PUBLISH_LOW_WATER: i32 = 16 * 1024;
/// Fallback tick: picks up data below the low-water mark and checks the idle timeout.
const TICK: Duration = Duration::from_millis(250);
/// Warnings (e.g. unparsable frames) logged per connection; the rest are only counted.
const MAX_LOGGED_WARNINGS: u32 = 5;

/// Receives the frames of one accepted publish. Dropping it ends the publish.
pub trait FrameSink: Send + 'static {
    fn push(&mut self, frame: Frame);
}

/// Decides what happens to a publish.
pub trait PublishHandler: Send + Sync + 'static {
    type Sink: FrameSink;
    /// Accept (returning where the frames go) or refuse with an RTMP status code and reason.
    fn publish(&self, req: &PublishRequest) -> Result<Self::Sink, (&'static str, String)>;
}

/// Deadlines and bounds of RTMP connections (`[server]` in the configuration).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// The handshake must be complete this long after the connection opened.
    pub handshake_timeout: Duration,
    /// Longest one write to the peer may wait.
    pub write_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Bytes of messages being reassembled, over all connections.
    pub reassembly: Option<Arc<super::chunk::ReassemblyBudget>>,
}

/// Accepts connections until `shutdown` fires. Connection tasks join `tracker`.
pub async fn serve<H: PublishHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: the newcomer is closed at once, the connections in place keep going.
            metrics::counter!("reel_rtmp_connections_refused_total").increment(1);
            tracing::warn!(%peer, max = limits.max_connections, "rtmp connection refused: server.max_connections reached");
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            if let Err(e) = connection(sock, handler, limits, shutdown).await {
                tracing::info!(%peer, error = &e as &dyn std::error::Error, "rtmp connection ended");
            }
            drop(slot);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("handshake not complete after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer took nothing for {0:?}: it stopped reading")]
    WriteTimeout(Duration),
    #[error("publish refused: {0}")]
    Refused(String),
}

async fn connection<H: PublishHandler>(
    mut sock: TcpStream,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let Limits { idle_timeout, handshake_timeout, write_timeout, reassembly, .. } = limits;
    let opened = tokio::time::Instant::now();
    let mut session = ServerSession::with_budget(reassembly);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut events = Vec::with_capacity(64);
    let mut sink: Option<H::Sink> = None;
    let mut warnings = 0u32;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_data = tokio::time::Instant::now();
    let mut batching = false;
    let mut draining = false;
    let result = loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = if draining {
            // Shutting down: take what the kernel already holds, then stop.
            recv_now(&sock, &mut buf).unwrap_or(0)
        } else {
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    draining = true;
                    continue;
                }
                r = sock.read_buf(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => break Err(e.into()),
                },
                _ = tick.tick() => match recv_now(&sock, &mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if last_data.elapsed() > idle_timeout {
                            break Err(ConnError::Idle(idle_timeout));
                        }
                        if !session.handshake_done() && opened.elapsed() > handshake_timeout {
                            break Err(ConnError::HandshakeTimeout(handshake_timeout));
                        }
                        continue;
                    }
                    Err(e) => break Err(e.into()),
                },
            }
        };
        if n == 0 {
            break Ok(());
        }
        last_data = tokio::time::Instant::now();
        let fed = session.feed(&mut buf, &mut events);
        // A handshake trickled in a byte at a time is held to the same deadline.
        if !session.handshake_done() && opened.elapsed() > handshake_timeout {
            break Err(ConnError::HandshakeTimeout(handshake_timeout));
        }
        let mut refused = None;
        for ev in events.drain(..) {
            match ev {
                SessionEvent::PublishRequested(req) => match handler.publish(&req) {
                    Ok(s) => {
                        sink = Some(s);
                        session.accept_publish();
                        if !batching {
                            batching = set_low_water(&sock, PUBLISH_LOW_WATER);
                        }
                    }
                    Err((code, why)) => {
                        // A hostile name may be kilobytes long: the log keeps its start.
                        let short = |n: &str| n.chars().take(64).collect::<String>();
                        tracing::warn!(app = %short(&req.app), stream = %short(&req.stream), "publish refused: {why}");
                        session.reject_publish(code, &why);
                        refused = Some(why);
                    }
                },
                SessionEvent::Frame(f) => {
                    if let Some(s) = &mut sink {
                        s.push(f);
                    }
                }
                SessionEvent::Unpublished => sink = None,
                SessionEvent::Warning(w) => {
                    // One bad frame can repeat every frame: log the first few per connection.
                    warnings += 1;
                    if warnings <= MAX_LOGGED_WARNINGS {
                        tracing::warn!("rtmp: {w}");
                    }
                    metrics::counter!("reel_rtmp_bad_frames_total").increment(1);
                }
            }
        }
        while let Some(out) = session.take_output() {
            match tokio::time::timeout(write_timeout, sock.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    metrics::counter!("reel_rtmp_write_timeouts_total").increment(1);
                    return Err(ConnError::WriteTimeout(write_timeout));
                }
            }
        }
        if let Some(why) = refused {
            break Err(ConnError::Refused(why));
        }
        if let Err(e) = fed {
            break Err(e.into());
        }
    };
    drop(sink);
    let _ = tokio::time::timeout(write_timeout, sock.shutdown()).await;
    result
}

/// Reads what the kernel holds right now, below the low-water mark too. (Tokio's `try_read`
/// trusts its cached readiness, which a low-water mark keeps unset.)
#[cfg(unix)]
fn recv_now(sock: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the buffer's spare capacity; we
    // mark exactly the bytes it reports as initialised.
    let n = unsafe { libc::recv(sock.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above; n <= spare.len().
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

#[cfg(not(unix))]
fn recv_now(sock: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    sock.try_read_buf(buf)
}

/// Sets SO_RCVLOWAT; returns whether it took effect.
#[cfg(unix)]
fn set_low_water(sock: &TcpStream, bytes: i32) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(unix))]
fn set_low_water(_sock: &TcpStream, _bytes: i32) -> bool {
    false
}
