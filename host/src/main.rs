//! `reel`: command line, wiring and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use reel::config::{Config, Format};
use reel::ingest::conn::{FrameSink, PublishHandler};
use reel::ingest::session::PublishRequest;
use reel::record::Recorder;

#[derive(Parser)]
#[command(
    name = "reel",
    version,
    about = "Reel records live streams at the edge: RTMP in, FLV/HLS/MP4/AAC files out, without transcoding."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the recorder: listen for RTMP publishers and record them.
    ///
    /// Without --config, Reel listens for RTMP on 127.0.0.1:1935 and HTTP on 127.0.0.1:8080
    /// and records every stream as FLV under ./recordings/APP/STREAM/.
    Serve {
        /// TOML configuration file (see reel.example.toml for every key).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the effective configuration check result and exit.
        #[arg(long)]
        check: bool,
    },
    /// Remux a recorded FLV file into another container, without transcoding.
    Remux {
        /// Input FLV file.
        input: PathBuf,
        /// Output format.
        #[arg(short = 'f', long = "format", value_parser = parse_format)]
        format: Format,
        /// Output file (for hls: the playlist; segments go beside it).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// HLS segment length (cut at the first keyframe at or after it).
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        segment: reel::config::Duration,
        /// Replace OUTPUT if it exists (for hls, also the segments it lists).
        #[arg(short = 'y', long = "overwrite")]
        overwrite: bool,
    },
    /// Finish a file a crash left in STORAGE_ROOT/.partial/ (FLV or fragmented MP4) into a
    /// complete, seekable file.
    Recover {
        /// The .part file.
        input: PathBuf,
        /// Where the finished file goes.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Check or try a policy plugin (a WebAssembly component).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin, list the interfaces it exports and its WIT version, and reject what the
    /// host cannot use (with the reason).
    Check {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// Reuse and fill the compile cache of `reel serve` with this data_dir (a first load of
        /// a Python or JavaScript plugin compiles for seconds; later ones take milliseconds).
        #[arg(long, default_value = "reel-data")]
        data_dir: PathBuf,
        /// Compile without the cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Make one decision with a plugin and print it as JSON.
    Run {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// admission, rules, segmentation, naming or callbacks.
        #[arg(long)]
        interface: String,
        /// JSON input: {"stream": {...}, "file": {...}, "candidates": [...], "url": "..."}.
        #[arg(long)]
        input: PathBuf,
        /// TOML file with the plugin's config table (what `config = {...}` holds).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The compile cache of `reel serve` with this data_dir is reused and filled.
        #[arg(long, default_value = "reel-data")]
        data_dir: PathBuf,
    },
}

fn plugin(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Check { file, data_dir, no_cache } => {
            let cache = (!no_cache).then(|| data_dir.join(reel::policy::CACHE_DIR));
            println!("{}", reel::policy::cli::check(&file, cache.as_deref())?)
        }
        PluginCommand::Run { file, interface, input, config, data_dir } => {
            let input = std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
            let table = match config {
                Some(p) => {
                    toml::from_str(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)
                        .with_context(|| format!("parsing {}", p.display()))?
                }
                None => toml::Table::new(),
            };
            let cache = data_dir.join(reel::policy::CACHE_DIR);
            println!("{}", reel::policy::cli::run(&file, &interface, &input, table, Some(&cache))?);
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<reel::config::Duration, String> {
    reel::config::parse_duration(s)
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "flv" => Ok(Format::Flv),
        "hls" | "m3u8" => Ok(Format::Hls),
        "mp4" => Ok(Format::Mp4),
        "aac" => Ok(Format::Aac),
        other => Err(format!("unknown format {other:?}: use flv, hls, mp4 or aac")),
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if matches!(cli.command, Command::Serve { check: false, .. }) {
        without_thread_cache();
    }
    let res = match cli.command {
        Command::Serve { config, check } => serve(config, check),
        Command::Remux { input, format, output, segment, overwrite } => {
            remux(input, format, output, segment, overwrite)
        }
        Command::Recover { input, output } => reel::record::remux::recover(&input, &output)
            .map(|r| eprintln!("recovered {} -> {} ({} bytes)", input.display(), output.display(), r.bytes_out))
            .map_err(Into::into),
        Command::Plugin { command } => plugin(command),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The glibc tunable that sizes each thread's cache of freed small blocks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THREAD_CACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// `reel serve` runs with glibc's per-thread cache of freed small blocks (tcache) off.
///
/// Frames and the lists that carry them are allocated on an ingest thread and freed on a
/// writer thread once written. With the cache on, the freeing thread keeps such a block and
/// hands it to its own next allocation of that size, so blocks of one thread's heap can end up
/// held by other threads for as long as their allocations live; without it a freed block goes
/// back to the heap it came from. Measured (BENCHMARKS.md, "A thread's freed blocks back to
/// their heap"): RSS lower in every bench case, and over ten minutes 12–30% lower with less
/// than half the growth, at the same CPU. glibc reads its tunables only when a process
/// starts, so the process starts itself again, once, with `GLIBC_TUNABLES` set: same PID,
/// arguments and descriptors, before any thread or socket exists. An operator's own
/// `glibc.malloc.tcache_count` is kept as given.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn without_thread_cache() {
    use std::os::unix::process::CommandExt;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.split(':').any(|t| t.starts_with(THREAD_CACHE_TUNABLE)) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let tunables = if current.is_empty() {
        format!("{THREAD_CACHE_TUNABLE}=0")
    } else {
        format!("{current}:{THREAD_CACHE_TUNABLE}=0")
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    // `exec` returns only if it failed: then Reel runs with the cache.
    let err = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
    tracing::warn!("running with the allocator's thread cache: restarting without it failed: {err}");
}

fn load_config(path: &Option<PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    })
}

fn remux(
    input: PathBuf,
    format: Format,
    output: PathBuf,
    segment: reel::config::Duration,
    overwrite: bool,
) -> Result<()> {
    let opts = reel::record::remux::RemuxOptions { segment_ms: segment.as_millis(), overwrite };
    let r = reel::record::remux::remux(&input, format, &output, opts)?;
    eprintln!(
        "remuxed {} frames, {} -> {} bytes in {:.3} s ({:.0} MB/s)",
        r.frames,
        r.bytes_in,
        r.bytes_out,
        r.seconds,
        r.bytes_in as f64 / r.seconds.max(1e-9) / 1e6
    );
    Ok(())
}

fn serve(config_path: Option<PathBuf>, check: bool) -> Result<()> {
    let config = load_config(&config_path)?;
    if check {
        for (name, t) in &config.template {
            if let Some(p) = &t.name {
                reel::policy::check_name_template(p).map_err(|e| anyhow::anyhow!("template.{name}.name: {e}"))?;
            }
        }
        println!("configuration is valid");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(run(config, config_path));
    // Whatever outlived the shutdown deadline is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating data_dir {}", config.server.data_dir.display()))?;
    let rtmp_addr: SocketAddr = config.server.rtmp_listen.parse()?;
    let http_addr: SocketAddr = config.server.http_listen.parse()?;
    let server = config.server.clone();
    let limits = reel::ingest::conn::Limits {
        idle_timeout: server.idle_timeout.std(),
        handshake_timeout: server.handshake_timeout.std(),
        write_timeout: server.write_timeout.std(),
        max_connections: server.max_connections,
        reassembly: Some(reel::ingest::chunk::ReassemblyBudget::new(
            usize::try_from(server.max_reassembly_bytes).unwrap_or(usize::MAX),
        )),
    };
    let http_limits = reel::api::HttpLimits {
        header_timeout: server.http_header_timeout.std(),
        max_connections: server.max_http_connections,
    };
    let deadline = server.shutdown_timeout.std();
    let node_id = config.catalog.node_id.clone().unwrap_or_else(host_name);
    let catalog = reel::catalog::Catalog::open(&config.catalog, &config.server.data_dir, node_id)
        .await
        .context("opening the catalog")?;
    let http_client = reel::notify::http_client();
    let deliverer = reel::notify::Deliverer::start(catalog.clone(), (&config.events).into(), http_client.clone());
    let recorder = Recorder::new(config, Some(catalog.clone())).context("opening storage")?;
    recorder.recover_partials().await;
    let tasks = reel::tasks::Tasks::start(catalog.clone(), recorder.clone()).await.context("reading record tasks")?;
    tasks.set_http_client(http_client);

    let rtmp =
        tokio::net::TcpListener::bind(rtmp_addr).await.with_context(|| format!("binding RTMP on {rtmp_addr}"))?;
    let http =
        tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding HTTP on {http_addr}"))?;
    tracing::info!(rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, "reel listening");

    let reload: reel::api::ReloadFn = {
        let recorder = recorder.clone();
        let path = config_path.clone();
        Arc::new(move || {
            let cfg = load_config(&path).map_err(|e| format!("{e:#}"))?;
            recorder.reload(cfg).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
            tracing::info!("configuration reloaded");
            Ok(())
        })
    };

    let shutdown = CancellationToken::new();
    let conns = TaskTracker::new();
    let workers =
        Arc::new(reel::ingest::conn::Workers::start(server.ingest_threads).context("starting the ingest threads")?);
    let rtmp_task = tokio::spawn(reel::ingest::conn::serve(
        rtmp,
        Arc::new(Publishes(recorder.clone())),
        limits,
        shutdown.clone(),
        conns.clone(),
        workers.clone(),
    ));
    let scheduler = tokio::spawn(tasks.clone().run(shutdown.clone()));
    let retention = tokio::spawn(reel::tasks::retention::run(recorder.clone(), catalog.clone(), shutdown.clone()));
    let app =
        reel::api::router(reel::api::ApiState { recorder: recorder.clone(), tasks, metrics, reload: reload.clone() });
    let http_task = tokio::spawn(reel::api::serve(http, app, http_limits, shutdown.clone(), deadline));

    wait_for_signals(reload).await;
    tracing::info!(deadline_s = deadline.as_secs_f64(), "shutting down: closing connections and finishing open files");
    let end = tokio::time::Instant::now() + deadline;
    shutdown.cancel();
    let _ = rtmp_task.await;
    let _ = scheduler.await;
    let _ = retention.await;
    conns.close();
    let clean = tokio::time::timeout_at(end, async {
        conns.wait().await;
        recorder.drain().await;
    })
    .await
    .is_ok();
    if !clean {
        tracing::error!("connections or recordings still open at the shutdown deadline; exiting without them");
    }
    workers.stop();
    let left = end.saturating_duration_since(tokio::time::Instant::now()).max(std::time::Duration::from_secs(1));
    if !deliverer.drain(left.min(std::time::Duration::from_secs(10))).await {
        tracing::warn!("some events were not delivered before exit; they stay in the outbox for the next start");
    }
    deliverer.stop();
    let _ = tokio::time::timeout_at(end + std::time::Duration::from_secs(1), http_task).await;
    catalog.close().await;
    if clean {
        tracing::info!("all files closed; bye");
    }
    Ok(())
}

/// This machine's name (the default `catalog.node_id`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "reel".into())
}

/// Ingest hands publishes to the recorder: wired here, so neither imports the other.
struct Publishes(Recorder);

/// Where a publisher's frames go: its recording.
struct Frames(reel::record::StreamHandle);

impl FrameSink for Frames {
    fn push(&mut self, frame: reel::media::Frame) {
        self.0.push(frame);
    }
    fn read_done(&mut self) {
        self.0.read_done();
    }
}

impl PublishHandler for Publishes {
    type Sink = Frames;
    fn publish(&self, req: &PublishRequest) -> Result<Frames, (&'static str, String)> {
        let auth = self.0.runtime().config.auth.clone();
        let now = reel::media::time::now_ms() / 1000;
        if let Err(why) = reel::ingest::auth::check(&auth, &req.domain, &req.app, &req.stream, &req.params, now) {
            metrics::counter!("reel_publishes_refused_total", "reason" => "auth").increment(1);
            return Err(("NetStream.Publish.BadName", format!("publish not authorized: {why}")));
        }
        let info = reel::policy::StreamInfo {
            domain: req.domain.clone(),
            app: req.app.clone(),
            name: req.stream.clone(),
            params: req.params.clone(),
            video_codec: None,
            audio_codec: None,
            started_at_ms: reel::media::time::now_ms(),
        };
        self.0.publish(info).map(Frames).map_err(|r| (r.code, r.description))
    }
}

#[cfg(unix)]
async fn wait_for_signals(reload: reel::api::ReloadFn) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                let f = reload.clone();
                match tokio::task::spawn_blocking(move || f()).await {
                    Ok(Err(e)) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                    Err(e) => tracing::error!("reload failed: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_reload: reel::api::ReloadFn) {
    let _ = tokio::signal::ctrl_c().await;
}
