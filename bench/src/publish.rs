//! The tokio side of `reel bench publish`: one task per connection driving a sans-IO
//! [`ClientSession`] with a [`Pacer`].

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{interval_at, MissedTickBehavior};

use super::{BenchError, Media, Pacer, PublishOptions, Report, CLOSE_WAIT, FAST_BATCH_BYTES, SETUP_TIMEOUT};
use reel::ingest::client::{ClientEvent, ClientSession, Role, RtmpUrl};

/// Read buffer of a publisher: the server only sends replies, acks and pings.
const READ_BUF: usize = 4096;

/// What one connection did.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    /// Audio and video messages written to the socket.
    pub frames: u64,
    /// Payload bytes of all messages written (data messages included).
    pub bytes: u64,
    /// `NetStream.Publish.Start` was received.
    pub published: bool,
    /// Wall-clock time (Unix ms) the unpublish was sent.
    pub unpublished_at_ms: Option<u64>,
    /// How long each media write took to be accepted by the socket, in microseconds: a
    /// server that stops reading makes its publishers' writes wait (a stall).
    pub write_us: Vec<u32>,
    pub error: Option<String>,
}

/// Runs all publishers to the end and reports.
pub async fn publish(opts: PublishOptions) -> Result<Report, BenchError> {
    let media = Arc::new(Media::load(&opts.input)?);
    let urls: Vec<RtmpUrl> = (0..opts.streams)
        .map(|i| RtmpUrl::parse(&opts.url.replace("{n}", &i.to_string()).replace("{i}", &i.to_string())))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    // Every connection ticks on the same grid, so the runtime wakes once per tick for all of
    // them instead of once per connection.
    let epoch = tokio::time::Instant::now();
    let n = opts.streams as u32;
    let mut tasks = Vec::with_capacity(urls.len());
    for (i, url) in urls.into_iter().enumerate() {
        let delay = opts.ramp.mul_f64(f64::from(i as u32) / f64::from(n));
        let media = media.clone();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut r = StreamResult::default();
            if let Err(e) = one_stream(&url, media, &opts, epoch, &mut r).await {
                r.error = Some(e);
            }
            r
        }));
    }
    let mut streams = Vec::with_capacity(tasks.len());
    for t in tasks {
        streams.push(
            t.await.unwrap_or_else(|e| StreamResult { error: Some(format!("task failed: {e}")), ..Default::default() }),
        );
    }
    Ok(Report { streams, seconds: started.elapsed().as_secs_f64() })
}

/// The first instant at or after `now` on the grid `epoch + k * tick`.
fn next_grid_tick(
    epoch: tokio::time::Instant,
    now: tokio::time::Instant,
    tick: std::time::Duration,
) -> tokio::time::Instant {
    let since = now.saturating_duration_since(epoch).as_nanos();
    let tick_ns = tick.as_nanos().max(1);
    let k = since.div_ceil(tick_ns);
    epoch + std::time::Duration::from_nanos(u64::try_from(k * tick_ns).unwrap_or(u64::MAX))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Handles what the server said while publishing; an error ends the stream.
fn check_events(events: &mut Vec<ClientEvent>) -> Result<(), String> {
    for ev in events.drain(..) {
        match ev {
            ClientEvent::Rejected { code, description } => {
                return Err(format!("server refused: {code}: {description}"))
            }
            ClientEvent::Closed { code } => return Err(format!("server ended the stream: {code}")),
            _ => {}
        }
    }
    Ok(())
}

async fn one_stream(
    url: &RtmpUrl,
    media: Arc<Media>,
    opts: &PublishOptions,
    epoch: tokio::time::Instant,
    r: &mut StreamResult,
) -> Result<(), String> {
    let mut client = ClientSession::new(url.config(Role::Publish));
    let mut inbuf = BytesMut::with_capacity(READ_BUF);
    let mut events = Vec::with_capacity(8);
    let addr = url.address();

    // Connect, handshake, publish.
    let setup = async {
        let mut sock = TcpStream::connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = sock.set_nodelay(true);
        loop {
            if let Some(out) = client.take_output() {
                sock.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            }
            if client.is_publishing() {
                return Ok(sock);
            }
            inbuf.reserve(READ_BUF);
            if sock.read_buf(&mut inbuf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("server closed the connection during setup".to_string());
            }
            client.feed(&mut inbuf, &mut events).map_err(|e| e.to_string())?;
            for ev in events.drain(..) {
                match ev {
                    ClientEvent::Rejected { code, description } => {
                        return Err(format!("server refused: {code}: {description}"))
                    }
                    ClientEvent::Closed { code } => return Err(format!("server closed: {code}")),
                    _ => {}
                }
            }
        }
    };
    let mut sock = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("no NetStream.Publish.Start within {SETUP_TIMEOUT:?}")),
    };
    r.published = true;

    // Send.
    let duration_ms = opts.duration.as_millis() as u64;
    let mut pacer = Pacer::new(media, duration_ms);
    let start = tokio::time::Instant::now();
    let mut ticks = interval_at(next_grid_tick(epoch, start, opts.tick), opts.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut rd, mut wr) = sock.split();
    let result: Result<(), String> = loop {
        tokio::select! {
            biased;
            n = rd.read_buf(&mut inbuf) => {
                match n {
                    Ok(0) => break Err("server closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => break Err(format!("read: {e}")),
                }
                if let Err(e) = client.feed(&mut inbuf, &mut events) {
                    break Err(e.to_string());
                }
                if let Err(e) = check_events(&mut events) {
                    break Err(e);
                }
                if inbuf.capacity() - inbuf.len() < READ_BUF / 4 {
                    inbuf.reserve(READ_BUF);
                }
            }
            _ = async { if opts.fast { tokio::task::yield_now().await } else { ticks.tick().await; } } => {
                let now = if opts.fast { u64::MAX } else { start.elapsed().as_millis() as u64 };
                let (mut frames, mut bytes) = (0u64, 0u64);
                while let Some((tag, ts)) = pacer.next_due(now) {
                    if let Err(e) = client.send_media(tag.tag_type, ts as u32, &tag.body) {
                        return Err(e.to_string());
                    }
                    frames += u64::from(tag.is_frame());
                    bytes += tag.body.len() as u64;
                    if client.pending_output() >= FAST_BATCH_BYTES {
                        break;
                    }
                }
                if let Some(out) = client.take_output() {
                    let began = Instant::now();
                    if let Err(e) = wr.write_all(&out).await {
                        break Err(format!("write: {e}"));
                    }
                    r.write_us.push(began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                r.frames += frames;
                r.bytes += bytes;
                if pacer.finished() {
                    break Ok(());
                }
            }
        }
    };
    result?;

    // Unpublish, and give the server a moment to confirm.
    client.close();
    r.unpublished_at_ms = Some(now_unix_ms());
    if let Some(out) = client.take_output() {
        wr.write_all(&out).await.map_err(|e| format!("write at unpublish: {e}"))?;
    }
    let confirm = async {
        loop {
            match rd.read_buf(&mut inbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if client.feed(&mut inbuf, &mut events).is_err() {
                return;
            }
            if events.drain(..).any(|e| matches!(e, ClientEvent::Closed { .. } | ClientEvent::Rejected { .. })) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, confirm).await;
    let _ = wr.shutdown().await;
    Ok(())
}
