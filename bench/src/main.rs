//! `reel-bench`: load generators for measuring a recorder, a tool beside Reel rather than part
//! of it. `reel-bench publish` replays an
//! FLV file over many RTMP connections, paced in real time by the tags' timestamps (or as fast
//! as possible), and reports what it sent as one JSON line.
//!
//! The generator has to stay much cheaper than the server it measures: the file is read once
//! and every connection sends slices of the same buffer; each connection wakes on its own
//! tick (tokio's timer wheel), chunks everything due into one reused buffer and writes it with
//! one call.

mod pacer;
mod publish;

use std::path::PathBuf;
use std::time::Duration;

pub use pacer::{Media, Pacer, Tag};
pub use publish::{publish, StreamResult};

/// Longest a connection may take from TCP connect to `NetStream.Publish.Start`.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publisher waits for the server to confirm the unpublish before closing.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// In --fast mode, bytes chunked per write.
pub const FAST_BATCH_BYTES: usize = 256 << 10;
/// Most connections one run may open (each is a socket and a task).
pub const MAX_STREAMS: usize = 20_000;

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Publish an FLV file over N RTMP connections and report the frames sent (JSON on stdout).
    Publish(PublishOptions),
}

#[derive(Clone, Debug, clap::Args)]
pub struct PublishOptions {
    /// RTMP URL to publish to; `{i}` (or n in braces) is replaced by the stream index (0..N).
    // (clap prints the brace form as a line break, so the help names it in words.)
    #[arg(long)]
    pub url: String,
    /// Number of simultaneous publishers.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// FLV file to replay (read once into memory; looped with continuous timestamps).
    #[arg(long)]
    pub input: PathBuf,
    /// How much media each publisher sends (in media time; in real time unless --fast).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send as fast as the connection takes it instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Spread the connection starts evenly over this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Pacing tick: each connection wakes this often and sends everything due.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub tick: Duration,
    /// Worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    reel::config::parse_duration(s).map(|d| d.std())
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Media(#[from] reel::media::MediaError),
    #[error(transparent)]
    Url(#[from] reel::ingest::ClientError),
    #[error("{0}")]
    Options(String),
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
}

/// What a run sent.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub streams: Vec<StreamResult>,
    pub seconds: f64,
}

impl Report {
    pub fn frames_sent(&self) -> u64 {
        self.streams.iter().map(|s| s.frames).sum()
    }

    pub fn errors(&self) -> Vec<String> {
        self.streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.error.as_ref().map(|e| format!("stream {i}: {e}")))
            .collect()
    }

    /// Percentiles (50, 99, 100) of every media write's time, in ms.
    pub fn write_ms(&self) -> [f64; 3] {
        let mut all: Vec<u32> = self.streams.iter().flat_map(|s| s.write_us.iter().copied()).collect();
        if all.is_empty() {
            return [0.0; 3];
        }
        all.sort_unstable();
        let at = |p: usize| f64::from(all[(all.len() - 1) * p / 100]) / 1000.0;
        [at(50), at(99), at(100)]
    }

    /// The one-line summary printed on stdout.
    pub fn to_json(&self) -> serde_json::Value {
        let frames: Vec<u64> = self.streams.iter().map(|s| s.frames).collect();
        let [write_p50, write_p99, write_max] = self.write_ms();
        serde_json::json!({
            "streams": self.streams.len(),
            "published": self.streams.iter().filter(|s| s.published).count(),
            "frames_sent": self.frames_sent(),
            "frames_min": frames.iter().min().copied().unwrap_or(0),
            "frames_max": frames.iter().max().copied().unwrap_or(0),
            "bytes_sent": self.streams.iter().map(|s| s.bytes).sum::<u64>(),
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "frames_per_stream": frames,
            "unpublished_at_ms": self.streams.iter().map(|s| s.unpublished_at_ms).collect::<Vec<_>>(),
            "errors": self.errors(),
            "write_ms_p50": write_p50,
            "write_ms_p99": write_p99,
            "write_ms_max": write_max,
        })
    }

    /// A few lines for people, printed on stderr.
    pub fn human(&self) -> String {
        let frames: Vec<u64> = self.streams.iter().map(|s| s.frames).collect();
        let bytes: u64 = self.streams.iter().map(|s| s.bytes).sum();
        let errors = self.errors();
        let mut s = format!(
            "bench publish: {} streams ({} published) in {:.1} s: {} frames sent (per stream min {} max {}), {:.1} MB, {:.1} Mbit/s\n",
            frames.len(),
            self.streams.iter().filter(|s| s.published).count(),
            self.seconds,
            self.frames_sent(),
            frames.iter().min().copied().unwrap_or(0),
            frames.iter().max().copied().unwrap_or(0),
            bytes as f64 / 1e6,
            bytes as f64 * 8.0 / 1e6 / self.seconds.max(1e-9),
        );
        for e in errors.iter().take(10) {
            s.push_str(&format!("  error: {e}\n"));
        }
        if errors.len() > 10 {
            s.push_str(&format!("  ... and {} more errors\n", errors.len() - 10));
        }
        s
    }
}

/// Runs a command on its own runtime.
fn run(cmd: BenchCommand) -> Result<Report, BenchError> {
    match cmd {
        BenchCommand::Publish(opts) => {
            if opts.streams == 0 || opts.streams > MAX_STREAMS {
                return Err(BenchError::Options(format!("--streams must be 1..={MAX_STREAMS}")));
            }
            if opts.streams > 1 && !opts.url.contains("{n}") && !opts.url.contains("{i}") {
                return Err(BenchError::Options(
                    "--url needs {i} or {n} (replaced by the stream index) when --streams is more than 1".into(),
                ));
            }
            if opts.tick.is_zero() {
                return Err(BenchError::Options("--tick must be more than 0".into()));
            }
            let rt = if opts.threads <= 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build()
            }
            .map_err(BenchError::Runtime)?;
            rt.block_on(publish(opts))
        }
    }
}

#[derive(clap::Parser)]
#[command(name = "reel-bench", version, about = "Load generators for measuring an RTMP recorder (see BENCHMARKS.md).")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// Runs a benchmark: the JSON report on stdout (one line), a summary on stderr. Fails when
/// any stream had an error, after printing the report.
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(report) => {
            println!("{}", report.to_json());
            eprint!("{}", report.human());
            let errors = report.errors().len();
            if errors == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("error: {errors} of {} streams had errors", report.streams.len());
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
