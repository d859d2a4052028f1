//! The only tokio code of ingest: accepts RTMP connections and drives a sans-IO
//! [`ServerSession`] per connection. What a publish becomes is the [`PublishHandler`]'s
//! business; this module never waits on it beyond a function call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{PublishRequest, ServerSession, SessionEvent};
use crate::media::Frame;

/// Read block of a connection before it publishes (handshake, commands). Frames are split off
/// the read buffer as refcounted slices, so a block is shared until its frames are written (at
/// the end of each read, [`FrameSink::read_done`]); it is reused in place once they are, or a
/// new one started when it runs low. A publishing connection lets go of its block
/// after each read instead ([`release`]).
const FIRST_BLOCK: usize = 8 * 1024;
/// Largest read block: a faster stream's beat is read in two or more (measured: a larger
/// block per stream costs more memory than the second read costs time).
const MAX_BLOCK: usize = 32 * 1024;
/// Once a publish is accepted its socket is read on the beat of its thread (see [`BEAT`]),
/// and the kernel wakes us between beats only when this much media is waiting: a burst larger
/// than the beat's room. Before the stream's rate is known, this.
const PUBLISH_LOW_WATER: i32 = 32 * 1024;
/// Highest mark (the kernel also caps it at half its largest receive buffer).
const MAX_LOW_WATER: i32 = 512 * 1024;
/// Media the low-water mark stands for, as time: two beats, so that a stream read on every
/// beat does not reach it (a mark also clamps the TCP window: it is never below a beat's
/// media, so the publisher is never held back).
const LOW_WATER_SPAN: Duration = Duration::from_millis(400);
/// How often the connections of a thread are read, all on the same instants (aligned to a
/// process-wide grid): the thread wakes once a beat for all its streams instead of once per
/// stream and read, and its recordings' writes of that beat go to their writer thread
/// together. Also when the idle and handshake deadlines are checked. What recording costs for
/// it: at most one beat of latency (the crash-loss bound is 2 s), and an unpublish is seen
/// within a beat.
const BEAT: Duration = Duration::from_millis(crate::config::READ_BEAT_MS);
/// Connections of a thread read on one instant, at most: a thread with more reads them in
/// groups (phases), each on its own instants, spread over the beat. What a beat brings is then
/// not all in memory at once (the writes of one group are done before the next is read): the
/// media in memory for reads not yet written is about this many streams' beat, whatever the
/// number of streams, for at most [`MAX_PHASES`] wake-ups of the thread a beat.
const GROUP: usize = 25;
/// Most groups a beat.
const MAX_PHASES: usize = 8;
/// Connections a thread takes before the next thread is used (see [`Workers`]).
const PACK: usize = 128;
/// Warnings (e.g. unparsable frames) logged per connection; the rest are only counted.
const MAX_LOGGED_WARNINGS: u32 = 5;

/// Receives the frames of one accepted publish. Dropping it ends the publish.
pub trait FrameSink: Send + 'static {
    fn push(&mut self, frame: Frame);
    /// The frames pushed since the last call are all that one read brought.
    fn read_done(&mut self) {}
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

/// How long an ingest thread's blocking thread (closing files) waits idle before it ends:
/// longer than the usual interval between cuts.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// The threads RTMP connections run on, each with its own single-threaded runtime. A
/// connection and the recordings its publisher feeds (spawned from it) share one thread, so
/// handing a frame to its recording is a local wake-up, not a cross-thread one: what an
/// event-loop server does, one loop per CPU.
///
/// Connections fill the first thread up to [`PACK`] before the next is used, and go to the
/// thread with the fewest after that: a few streams then wake one thread, not every thread
/// each a little (measured, 10 streams at 500 kbit/s: a fifth less CPU on one thread than
/// spread over two, and no second thread's heap), while a thousand still spread evenly.
pub struct Workers {
    threads: Vec<Worker>,
    stop: CancellationToken,
}

struct Worker {
    handle: tokio::runtime::Handle,
    connections: Arc<AtomicUsize>,
    /// Places handed to its connections, in turn (see [`Beat`]).
    places: AtomicUsize,
}

impl Workers {
    /// Starts `n` threads (0: one per CPU).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            // Its blocking threads close files: they stay between cuts (every 30 s or so, all
            // at once) instead of ending after 10 s idle and starting anew at each cut.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("reel-close-{i}"))
                .thread_keep_alive(BLOCKING_KEEP_ALIVE)
                .build()?;
            let handle = rt.handle().clone();
            let stopped = stop.clone();
            std::thread::Builder::new().name(format!("reel-ingest-{i}")).spawn(move || {
                rt.block_on(stopped.cancelled());
                // Tasks still running were given up by the shutdown deadline.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
            threads.push(Worker { handle, connections: Default::default(), places: AtomicUsize::new(0) });
        }
        Ok(Workers { threads, stop })
    }

    /// Ends the threads; call once their connections and recordings are done.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The thread a new connection runs on: the first with room under [`PACK`], or else the
    /// one with the fewest connections.
    fn pick(&self) -> &Worker {
        let count = |w: &&Worker| w.connections.load(Ordering::Relaxed);
        self.threads
            .iter()
            .find(|w| count(w) < PACK)
            .or_else(|| self.threads.iter().min_by_key(count))
            .expect("at least one ingest thread")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts connections until `shutdown` fires and runs each on one of `workers`. Connection
/// tasks join `tracker`.
pub async fn serve<H: PublishHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Arc<Workers>,
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
        // The socket moves to the worker's runtime (registered with its reactor there).
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = &e as &dyn std::error::Error, "cannot hand the connection to a worker");
                continue;
            }
        };
        let worker = workers.pick();
        let count = worker.connections.clone();
        count.fetch_add(1, Ordering::Relaxed);
        let beat = Beat { place: worker.places.fetch_add(1, Ordering::Relaxed), connections: count.clone() };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        worker.handle.spawn(tracker.track_future(async move {
            match TcpStream::from_std(sock) {
                Ok(sock) => {
                    if let Err(e) = connection(sock, handler, limits, shutdown, beat).await {
                        tracing::info!(%peer, error = &e as &dyn std::error::Error, "rtmp connection ended");
                    }
                }
                Err(e) => tracing::warn!(%peer, error = &e as &dyn std::error::Error, "cannot register the connection"),
            }
            count.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        }));
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
    beat: Beat,
) -> Result<(), ConnError> {
    let Limits { idle_timeout, handshake_timeout, write_timeout, reassembly, .. } = limits;
    let opened = tokio::time::Instant::now();
    let mut session = ServerSession::with_budget(reassembly);
    let mut block = FIRST_BLOCK;
    let mut buf = BytesMut::with_capacity(block);
    let mut events = Vec::with_capacity(16);
    let mut sink: Option<H::Sink> = None;
    let mut warnings = 0u32;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // A fresh timer per wait (not one reset): the timer wheel then holds the real deadline, and
    // a parked thread is not woken at a deadline that has since moved.
    let mut next_tick = beat.next(tokio::time::Instant::now());
    let mut last_data = tokio::time::Instant::now();
    let mut batching = false;
    // The low-water mark follows the stream's rate, measured over a second or more.
    let (mut low_water, mut rate_bytes, mut rate_since) = (0i32, 0usize, tokio::time::Instant::now());
    let mut draining = false;
    let mut tick_again = false;
    let result = loop {
        let n = if draining {
            // Shutting down: take what the kernel already holds, then stop.
            room(&mut buf, block);
            recv_now(&sock, &mut buf).unwrap_or(0)
        } else {
            // Room is made once data is there, not before the wait: a connection that has not
            // published yet then reuses its block in place (the frames of the last read were
            // dropped), and a publishing one holds none while it waits.
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    draining = true;
                    continue;
                }
                r = sock.readable() => match r {
                    Ok(()) => {
                        room(&mut buf, block);
                        match read_ready(&sock, &mut buf) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(e) => break Err(e.into()),
                        }
                    }
                    Err(e) => break Err(e.into()),
                },
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = beat.next(tokio::time::Instant::now());
                    room(&mut buf, block);
                    let spare = buf.capacity() - buf.len();
                    // Not `read_ready`: below the mark the readiness is unset, and `try_io`
                    // would not read at all.
                    match recv_now(&sock, &mut buf) {
                        Ok(n) => {
                            // The room was full and less than the mark may still wait in the
                            // kernel (the unpublish, say): read on now, not a beat later.
                            tick_again = n == spare;
                            n
                        }
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
                    }
                }
            }
        };
        if n == 0 {
            break Ok(());
        }
        last_data = tokio::time::Instant::now();
        next_tick = if std::mem::take(&mut tick_again) { last_data } else { beat.next(last_data) };
        if batching {
            rate_bytes += n;
            let span = rate_since.elapsed();
            if span >= Duration::from_secs(1) {
                let want = low_water_for(rate_bytes, span);
                if (want - low_water).abs() > low_water / 4 && set_low_water(&sock, want) {
                    low_water = want;
                    block = block_for(low_water);
                }
                (rate_bytes, rate_since) = (0, last_data);
            }
        }
        let fed = session.feed(&mut buf, &mut events);
        // A handshake trickled in a byte at a time is held to the same deadline.
        if !session.handshake_done() && opened.elapsed() > handshake_timeout {
            break Err(ConnError::HandshakeTimeout(handshake_timeout));
        }
        let mut refused = None;
        let mut pushed = false;
        for ev in events.drain(..) {
            match ev {
                SessionEvent::PublishRequested(req) => match handler.publish(&req) {
                    Ok(s) => {
                        sink = Some(s);
                        session.accept_publish();
                        if !batching {
                            batching = set_low_water(&sock, PUBLISH_LOW_WATER);
                            (low_water, rate_bytes, rate_since) = (PUBLISH_LOW_WATER, 0, tokio::time::Instant::now());
                            block = block_for(low_water);
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
                        pushed = true;
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
        // A read of a batching socket brings a beat's worth of frames: the recording writes
        // them now. (Without a low-water mark a read may be one packet: not worth a write.)
        if let (true, true, Some(s)) = (pushed, batching, &mut sink) {
            s.read_done();
        }
        if batching {
            release(&mut buf, block);
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

/// Lets go of a publishing connection's read block once the frames of the read are pushed:
/// they keep it until they are written, and the connection keeps only the bytes of a partial
/// chunk, copied. Between beats a publish then holds no block: the blocks in memory are those
/// of reads not yet written, not one per stream. (A partial message longer than a quarter
/// block — a publisher with a large chunk size — keeps its block, to be grown, not copied at
/// every read.)
fn release(buf: &mut BytesMut, block: usize) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    } else if buf.len() <= block / 4 {
        *buf = BytesMut::from(&buf[..]);
    }
}

/// Makes room for a read when little is left: up to `block` in all, the bytes of a partial
/// message included. (Asking for a whole block more than those bytes would never fit the block
/// being reused, and would grow it at every turn.)
fn room(buf: &mut BytesMut, block: usize) {
    if buf.capacity() - buf.len() < block / 4 {
        buf.reserve(block.saturating_sub(buf.len()).max(block / 4));
    }
}

/// The read block of a socket whose mark is `low_water` bytes: what one beat brings (half the
/// mark) and the partial chunk left from the read before. Memory per stream is about one
/// block, so it follows the stream's rate instead of fitting the fastest.
fn block_for(low_water: i32) -> usize {
    (low_water.max(0) as usize / 2 + 4096).next_multiple_of(4096).clamp(FIRST_BLOCK, MAX_BLOCK)
}

/// When a connection reads: its place on its thread, and how many connections the thread has.
struct Beat {
    place: usize,
    connections: Arc<AtomicUsize>,
}

impl Beat {
    /// The connection's next beat after `now` (see [`BEAT`], [`GROUP`]).
    fn next(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        next_beat(now, self.place, self.connections.load(Ordering::Relaxed))
    }
}

/// The next beat after `now` of the connection in `place` of a thread that has `connections`,
/// on a grid shared by every connection: the timers of one instant end in one turn of the
/// thread's timer wheel. The thread's connections are read in one group per [`GROUP`], each
/// group a share of the beat after the one before.
fn next_beat(now: tokio::time::Instant, place: usize, connections: usize) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let phases = connections.div_ceil(GROUP).clamp(1, MAX_PHASES);
    let origin = *ORIGIN.get_or_init(|| now) + BEAT / phases as u32 * (place % phases) as u32;
    let beats = now.saturating_duration_since(origin).as_nanos() / BEAT.as_nanos() + 1;
    origin + BEAT * beats as u32
}

/// The low-water mark for a stream that sent `bytes` in `span`: [`LOW_WATER_SPAN`] of it,
/// within [`PUBLISH_LOW_WATER`] ..= [`MAX_LOW_WATER`].
fn low_water_for(bytes: usize, span: Duration) -> i32 {
    let per_span = bytes as f64 * LOW_WATER_SPAN.as_secs_f64() / span.as_secs_f64().max(1e-3);
    (per_span as i64).clamp(PUBLISH_LOW_WATER as i64, MAX_LOW_WATER as i64) as i32
}

/// Reads what the kernel holds (see [`recv_now`]) once tokio reported the socket readable
/// (`try_io` reads nothing while the readiness is unset). A read that does not fill the room
/// took everything, so the readiness it came with is cleared — inside `try_io`, so a wake-up
/// that came meanwhile is kept — and the next wait does not end in a read that finds nothing
/// (measured: a sixth of all reads at 500 kbit/s). `Ok(0)`: the peer closed.
fn read_ready(sock: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let mut got = 0;
    let read = sock.try_io(tokio::io::Interest::READABLE, || {
        let spare = buf.capacity() - buf.len();
        got = recv_now(sock, buf)?;
        if got > 0 && got < spare {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_water_mark_follows_the_rate_within_bounds() {
        // 64 kbit/s brings 3 KB per 400 ms: the floor holds.
        assert_eq!(low_water_for(8_000, Duration::from_secs(1)), PUBLISH_LOW_WATER);
        // 2.5 Mbit/s over 2 s: 125 KB.
        assert_eq!(low_water_for(625_000, Duration::from_secs(2)), 125_000);
        // 20 Mbit/s: capped.
        assert_eq!(low_water_for(2_500_000, Duration::from_secs(1)), MAX_LOW_WATER);
    }

    #[test]
    fn beats_are_shared_and_follow_each_other() {
        let now = tokio::time::Instant::now();
        let beat = next_beat(now, 0, 1);
        assert!(beat > now && beat <= now + BEAT);
        // Any instant up to the beat gets the same one: connections read together.
        assert_eq!(next_beat(now + (beat - now) / 2, 0, 1), beat);
        assert_eq!(next_beat(beat - Duration::from_nanos(1), 0, 1), beat);
        // The beat itself gets the next.
        assert_eq!(next_beat(beat, 0, 1), beat + BEAT);
        assert_eq!(next_beat(beat + BEAT * 3 + Duration::from_millis(1), 0, 1), beat + BEAT * 4);
        // Up to a group, every connection of a thread reads on the same instants.
        for place in 0..GROUP {
            assert_eq!(next_beat(now, place, GROUP), beat);
        }
        // More, and they read in groups, each a share of the beat after the one before.
        let step = BEAT / 3;
        for place in 0..3 * GROUP {
            assert_eq!(
                next_beat(beat, place, 3 * GROUP),
                beat + step * (place % 3) as u32 + if place % 3 == 0 { BEAT } else { Duration::ZERO }
            );
        }
        assert_eq!(
            next_beat(beat, 4, 2 * GROUP + 1),
            beat + BEAT / 3,
            "a group more for the connection past a multiple"
        );
        // At most so many groups: a thousand connections wake the thread as often as 200.
        let most = BEAT / MAX_PHASES as u32;
        assert_eq!(next_beat(beat, MAX_PHASES - 1, 1000), beat + most * (MAX_PHASES - 1) as u32);
        assert_eq!(next_beat(beat, MAX_PHASES + 1, 1000), beat + most);
    }

    #[test]
    fn a_released_block_is_left_to_its_frames_with_a_partial_chunk_copied_out() {
        const BLOCK: usize = 20 * 1024;
        let mut buf = BytesMut::with_capacity(BLOCK);
        buf.resize(BLOCK - 100, 7);
        let frames = buf.split_to(BLOCK - 300).freeze();
        // 200 bytes of a chunk wait for the rest: they move to a buffer of their own.
        release(&mut buf, BLOCK);
        assert_eq!(&buf[..], &[7; 200][..]);
        assert!(buf.capacity() < BLOCK / 4, "the partial chunk alone is kept: {}", buf.capacity());
        let inside = frames.as_ptr_range();
        assert!(!inside.contains(&buf.as_ptr()) && buf.as_ptr() != inside.end, "copied out of the block");
        // Nothing left: nothing held.
        let mut empty = BytesMut::with_capacity(BLOCK);
        empty.resize(10, 0);
        let _f = empty.split_to(10);
        release(&mut empty, BLOCK);
        assert_eq!(empty.capacity(), 0);
        // A long partial message keeps its block, to grow instead of being copied each read.
        let mut long = BytesMut::with_capacity(BLOCK);
        long.resize(BLOCK / 2, 1);
        let at = long.as_ptr();
        release(&mut long, BLOCK);
        assert_eq!(long.as_ptr(), at);
        // The next read gets a block of its own.
        room(&mut buf, BLOCK);
        assert!(buf.capacity() >= BLOCK / 4 && buf[..] == [7; 200][..]);
    }

    #[test]
    fn room_reuses_a_block_whose_slices_are_gone_even_with_a_partial_message_left() {
        const BLOCK: usize = 20 * 1024;
        let mut buf = BytesMut::with_capacity(BLOCK);
        buf.resize(BLOCK - 100, 7);
        let block = buf.as_ptr();
        // A read's messages are split off and dropped (written); 100 bytes of the next remain.
        drop(buf.split_to(BLOCK - 200));
        room(&mut buf, BLOCK);
        assert_eq!(buf.as_ptr(), block, "the block is reused in place");
        assert_eq!(buf.capacity(), BLOCK, "and not grown");
        assert_eq!(&buf[..], &[7; 100][..]);
        // Still held: a new block.
        let held = buf.split_to(50);
        buf.resize(BLOCK - 60, 1);
        drop(buf.split_to(BLOCK - 150));
        room(&mut buf, BLOCK);
        assert_ne!(buf.as_ptr(), held.as_ptr().wrapping_add(50));
        assert!(buf.capacity() >= BLOCK / 4);
        // A chunk longer than the block still fits: the buffer grows by a quarter block a turn.
        let mut big = BytesMut::with_capacity(FIRST_BLOCK);
        big.resize(FIRST_BLOCK, 0);
        room(&mut big, FIRST_BLOCK);
        assert!(big.capacity() - big.len() >= FIRST_BLOCK / 4);
    }

    #[tokio::test]
    async fn a_read_that_leaves_room_uses_up_the_readiness_it_came_with() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let wait = Duration::from_secs(5);
        tokio::io::AsyncWriteExt::write_all(&mut peer, &[1; 100]).await.unwrap();
        tokio::time::timeout(wait, sock.readable()).await.unwrap().unwrap();
        let mut buf = BytesMut::with_capacity(4096);
        assert_eq!(read_ready(&sock, &mut buf).unwrap(), 100);
        // Nothing more came: the next wait waits (it would end at once, for a read that finds
        // nothing, were the readiness still set).
        let again = tokio::time::timeout(Duration::from_millis(100), sock.readable()).await;
        assert!(again.is_err(), "the readiness outlived the read that used it up");
        // What comes next still wakes it, and a read that fills its room keeps the readiness.
        tokio::io::AsyncWriteExt::write_all(&mut peer, &[2; 300]).await.unwrap();
        tokio::time::timeout(wait, sock.readable()).await.unwrap().unwrap();
        let mut small = BytesMut::with_capacity(200);
        let n = read_ready(&sock, &mut small).unwrap();
        assert_eq!(n, small.capacity());
        tokio::time::timeout(wait, sock.readable()).await.expect("more is waiting").unwrap();
        drop(peer);
        let mut rest = BytesMut::with_capacity(4096);
        let mut total = n;
        loop {
            tokio::time::timeout(wait, sock.readable()).await.unwrap().unwrap();
            match read_ready(&sock, &mut rest) {
                Ok(0) => break,
                Ok(k) => total += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(total, 300, "every byte read, then the close");
    }

    #[test]
    fn the_read_block_follows_the_low_water_mark() {
        // The first mark: half of it a beat, and a 4 KiB chunk.
        assert_eq!(block_for(PUBLISH_LOW_WATER), 20 * 1024);
        // 500 kbit/s: 12.5 KB a beat.
        assert_eq!(block_for(low_water_for(62_500, Duration::from_secs(1))), 20 * 1024);
        // 2.5 Mbit/s (62.5 KB a beat) and faster: a larger block costs more memory than the
        // second read of a beat costs time.
        assert_eq!(block_for(low_water_for(625_000, Duration::from_secs(2))), MAX_BLOCK);
        assert_eq!(block_for(MAX_LOW_WATER), MAX_BLOCK);
        assert_eq!(block_for(0), FIRST_BLOCK);
    }

    #[test]
    fn connections_fill_one_thread_then_go_to_the_least_busy() {
        use std::sync::atomic::Ordering::Relaxed;
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.threads.len(), 3);
        let on = |i: usize| Arc::ptr_eq(&workers.pick().connections, &workers.threads[i].connections);
        // A few connections share the first thread.
        workers.threads[0].connections.store(3, Relaxed);
        assert!(on(0));
        workers.threads[0].connections.store(PACK - 1, Relaxed);
        assert!(on(0));
        // A full thread passes new ones to the next with room, then to the least busy.
        workers.threads[0].connections.store(PACK, Relaxed);
        assert!(on(1));
        workers.threads[1].connections.store(PACK, Relaxed);
        assert!(on(2));
        workers.threads[2].connections.store(PACK + 5, Relaxed);
        workers.threads[1].connections.store(PACK + 2, Relaxed);
        assert!(on(0));
        workers.threads[0].connections.store(PACK + 9, Relaxed);
        assert!(on(1));
        // One that closes on the first thread makes room there again.
        workers.threads[0].connections.store(PACK - 1, Relaxed);
        assert!(on(0));
        // A task spawned there runs on its own thread, not the caller's.
        workers.threads[0].connections.store(PACK + 9, Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        workers.pick().handle.spawn(async move {
            tx.send(std::thread::current().name().map(String::from)).unwrap();
        });
        let name = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("reel-ingest-1"));
        workers.stop();
    }
}
