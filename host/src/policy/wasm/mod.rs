//! The WebAssembly plugin runtime, and the only place that knows about wasmtime.
//!
//! A narrow wrapper: one [`Engine`] per [`Runtime`] with epoch interruption, each plugin
//! compiled once (cached by content hash) and kept as an [`InstancePre`]; every decision
//! instantiates into a fresh [`Store`] with a deadline and a memory cap, so a plugin that traps
//! is never re-entered and no state leaks from one decision to the next.
//!
//! Plugins are WASI p2 components. Rust's `std` imports `wasi:cli` and `wasi:io`, and the
//! Python and JavaScript runtimes import `wasi:filesystem` and `wasi:sockets` whether or not a
//! plugin uses them, so the WASI p2 host is linked, with nothing in it: no preopened directory
//! (every path fails to open), every socket address denied and no name lookup, no environment,
//! stdin empty, and both clocks frozen at the Unix epoch unless the operator grants more
//! ([`Grants`]). stdout and stderr are discarded, or with `stderr` granted, go to the log
//! line by line, tagged with the plugin and rate-limited. Components importing anything else
//! the host does not provide (`wasi:http`, an unknown package) are refused at load time.

mod v0_1_0;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::failures::LogLimiter;
use super::{
    CallbackRequest, Candidate, ConfigValue, Failure, FailureReason, FileInfo, Format, Grants, Interface, Plan,
    StreamInfo, SUPPORTED_WIT_VERSIONS,
};

/// How often the engine's epoch advances; deadlines are rounded up to whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Plugin instances alive at once (one per decision in progress) across all plugins of a
/// registry. A decision beyond it fails and falls back to the builtin; decisions take tens of
/// microseconds, so only hundreds of threads deciding at the same instant would get there.
pub(crate) const MAX_CONCURRENT_CALLS: u32 = 256;

/// Address space reserved beyond the memory cap for each linear memory, and the guard region
/// after it. Address space only: 256 slots of 16 MiB + 1 MiB reserve about 4.3 GiB, none of it
/// backed by memory until a plugin touches it.
const MEMORY_SLACK: u64 = 1 << 20;
const MEMORY_GUARD: u64 = 64 << 10;

/// Freed slots kept ready for the same plugin; with [`KEEP_RESIDENT`] each keeps the pages its
/// last decision dirtied (typically 100–200 KiB).
const WARM_SLOTS: u32 = 16;

/// With PAGEMAP_SCAN, how much of a freed linear memory is reset in place instead of released.
const KEEP_RESIDENT: usize = 2 << 20;

/// Most table elements (function references) one instance may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a call carries besides its subject: the host's clock and fresh random bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallEnv {
    pub now_ms: u64,
    pub nonce: u64,
}

impl CallEnv {
    pub fn now() -> CallEnv {
        CallEnv { now_ms: crate::media::time::now_ms(), nonce: fastrand::u64(..) }
    }
}

/// An engine and linker shared by the plugins of one registry, with the per-call limits.
pub(crate) struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    deadline_ticks: u64,
    memory: usize,
}

impl Runtime {
    /// A runtime whose calls get `deadline` of wall time and `memory` bytes of linear memory.
    pub fn new(deadline: Duration, memory: u64) -> Result<Runtime, RuntimeError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .concurrency_support(false)
            .wasm_backtrace_max_frames(None)
            .parallel_compilation(true);
        // Pooled instances: a decision reuses a slot's memory mappings instead of mapping and
        // unmapping its own. Where the kernel has PAGEMAP_SCAN (Linux 6.7+), a freed slot's
        // dirtied pages are reset in place rather than dropped, so the next decision takes no
        // page faults: about 20 µs a decision instead of 28 µs (45 µs without the pool).
        let engine = match engine(&config, memory, true) {
            Ok(engine) => engine,
            Err(_) => engine(&config, memory, false).map_err(RuntimeError::Engine)?,
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(RuntimeError::Wasi)?;
        for version in SUPPORTED_WIT_VERSIONS {
            // `types` holds only types; the instance just has to exist.
            linker
                .instance(&format!("reel:policy/types@{version}"))
                .map_err(|source| RuntimeError::Types { version, source })?;
        }

        // The epoch ticker stops when the engine is gone.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("reel-wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .map_err(RuntimeError::Ticker)?;

        let deadline_ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1) as u64;
        let memory = usize::try_from(memory).unwrap_or(usize::MAX);
        Ok(Runtime { inner: Arc::new(Inner { engine, linker, deadline_ticks, memory }) })
    }

    /// Loads the component at `path`: compiles it (or reuses `cache_dir`'s copy), checks what it
    /// imports and exports, links it, and checks `config` with its `setup` export, if any.
    /// Errors are the reason, for [`super::PolicyError::Load`].
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        config: &[(String, ConfigValue)],
        grants: &Grants,
        memory: Option<u64>,
        cache_dir: Option<&Path>,
    ) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(LoadError::Read)?;
        self.load_bytes(name, &bytes, config, grants, memory, cache_dir)
    }

    /// Like [`Runtime::load`], from bytes.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        config: &[(String, ConfigValue)],
        grants: &Grants,
        memory: Option<u64>,
        cache_dir: Option<&Path>,
    ) -> Result<Plugin, LoadError> {
        check_header(bytes)?;
        // Its own cap (at most the engine's, which the registry sized for the largest).
        let memory =
            memory.map_or(self.inner.memory, |m| usize::try_from(m).unwrap_or(usize::MAX).min(self.inner.memory));
        let (component, cache_file) = self.compile(bytes, cache_dir)?;
        let shape = inspect(&self.inner.engine, &component)?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(LoadError::Link)?;
        let adapter = match shape.version.as_str() {
            "0.1.0" => v0_1_0::Adapter::new(&pre, &shape.exports, config)?,
            v => return Err(LoadError::UnsupportedVersion { version: v.to_owned() }),
        };
        let plugin = Plugin {
            name: name.to_owned(),
            size: bytes.len(),
            shape,
            cache_file,
            pre,
            adapter,
            grants: CallGrants::new(grants, memory),
            rt: self.inner.clone(),
            log: LogLimiter::default(),
        };
        // Instantiate now, so that a plugin that cannot start under the limits, exports a
        // function with the wrong type, or rejects its configuration, is refused at load rather
        // than at the first recording.
        plugin
            .call()
            .run(|store, instance| Ok(Ok(plugin.adapter.typecheck(store, instance))))
            .map_err(|f| LoadError::Start { reason: f.reason.as_str(), message: f.message })??;
        if plugin.exports(Interface::Setup) {
            plugin.adapter.validate(&plugin.call()).map_err(|f| match f.reason {
                FailureReason::Error => LoadError::Rejected(f.message),
                _ => LoadError::Setup { reason: f.reason.as_str(), message: f.message },
            })?;
        }
        Ok(plugin)
    }

    /// The compiled component, and the cache file it was read from or written to.
    fn compile(&self, bytes: &[u8], cache_dir: Option<&Path>) -> Result<(Component, Option<String>), LoadError> {
        let engine = &self.inner.engine;
        let compile = || {
            Component::new(engine, bytes).map_err(|e| {
                if format!("{e:#}").contains("exceeds the limit") {
                    LoadError::Memory { memory: self.inner.memory, source: e }
                } else {
                    LoadError::Compile(e)
                }
            })
        };
        let Some(dir) = cache_dir else { return Ok((compile()?, None)) };
        let name = format!("{}.cwasm", cache_key(engine, bytes));
        let file = dir.join(&name);
        // Read into memory rather than mapped, so a cache file replaced or truncated while in use
        // cannot fault the process.
        if let Ok(compiled) = std::fs::read(&file) {
            // SAFETY: the cache directory is Reel's own (`data_dir/plugin-cache`), written only
            // by `Component::serialize` below; wasmtime checks the version and engine settings.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(c) => return Ok((c, Some(name))),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = &*e as &dyn std::error::Error, "ignoring unusable compiled plugin")
                }
            }
        }
        let component = compile()?;
        match component.serialize() {
            Ok(b) => {
                if let Err(e) = write_atomically(dir, &file, &b) {
                    tracing::warn!(dir = %dir.display(), error = &e as &dyn std::error::Error, "cannot cache the compiled plugin");
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = &*e as &dyn std::error::Error,
                    "cannot serialize the compiled plugin for the cache"
                )
            }
        }
        Ok((component, Some(name)))
    }
}

fn engine(base: &Config, memory: u64, pagemap_scan: bool) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_CALLS)
        .total_core_instances(MAX_CONCURRENT_CALLS * 8)
        .total_memories(MAX_CONCURRENT_CALLS)
        .total_tables(MAX_CONCURRENT_CALLS * 4)
        .max_memory_size(usize::try_from(memory).unwrap_or(usize::MAX))
        .max_unused_warm_slots(WARM_SLOTS);
    if pagemap_scan {
        pool.pagemap_scan(Enabled::Yes).linear_memory_keep_resident(KEEP_RESIDENT);
    }
    let mut config = base.clone();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Reserve only the cap (plus a guard) per memory rather than the default 4 GiB;
        // bounds are then checked explicitly, which costs little for plugin-sized work.
        .memory_reservation(memory.saturating_add(MEMORY_SLACK))
        .memory_guard_size(MEMORY_GUARD);
    Engine::new(&config)
}

/// sha256 of the component and of the engine's compatibility (wasmtime version and settings).
fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.0.update(bytes);
    h.0.update(b"\0wasmtime\0");
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut h = DefaultHasher::new();
    (std::process::id(), std::thread::current().id()).hash(&mut h);
    let tmp = file.with_extension(format!("{:x}.part", h.finish()));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, file)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Why a plugin cannot be loaded. Each message names what is wrong with the component (the
/// caller, [`super::PolicyError::Load`], names the plugin and its file); an underlying error
/// is the [`source`](std::error::Error::source), not part of the message.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("not a WebAssembly file")]
    NotWasm,
    #[error(
        "not a component but a core WebAssembly module: build it with `--target wasm32-wasip2`, which emits components"
    )]
    CoreModule,
    #[error("not a component: unknown WebAssembly binary version")]
    UnknownBinary,
    #[error("does not fit the memory cap ([policy] memory = {memory} bytes)")]
    Memory {
        memory: usize,
        #[source]
        source: wasmtime::Error,
    },
    #[error("cannot compile it")]
    Compile(#[source] wasmtime::Error),
    #[error("cannot link it")]
    Link(#[source] wasmtime::Error),
    /// It imports a WASI interface the host withholds (filesystem, network).
    #[error("imports {import}, which is not granted: {hint}")]
    ImportNotGranted { import: String, hint: &'static str },
    #[error("imports {import}, which the host does not provide")]
    ImportUnknown { import: String },
    #[error("exports no reel:policy interface: export one with `reel_plugin::export!`")]
    NoPolicyExports,
    #[error("exports several WIT versions ({})", .versions.join(", "))]
    SeveralVersions { versions: Vec<String> },
    #[error("exports WIT version {version}, host supports {}", SUPPORTED_WIT_VERSIONS.join(", "))]
    UnsupportedVersion { version: String },
    #[error("imports {import} but exports WIT version {version}")]
    VersionMismatch { import: String, version: String },
    #[error("exports none of the reel:policy@{version} interfaces (rules, segmentation, naming, callbacks, setup)")]
    NoInterfaces { version: String },
    /// An interface is exported, but not with the functions its WIT version has.
    #[error("exports `{interface}` with the wrong shape")]
    WrongShape {
        interface: Interface,
        #[source]
        source: wasmtime::Error,
    },
    /// An interface's functions are there, with other types than its WIT version's.
    #[error("exports `{interface}` with types that do not match reel:policy@{version}")]
    TypeMismatch {
        interface: Interface,
        version: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    /// Instantiating it under the limits failed (trap, timeout, memory).
    #[error("cannot start ({reason}): {message}")]
    Start { reason: &'static str, message: String },
    /// Its `setup` export returned an error: the plugin's own message.
    #[error("rejects its configuration: {0}")]
    Rejected(String),
    #[error("setup failed ({reason}): {message}")]
    Setup { reason: &'static str, message: String },
}

/// Why the plugin runtime (engine, linker, epoch ticker) cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the WebAssembly engine for plugins")]
    Engine(#[source] wasmtime::Error),
    #[error("cannot link WASI for plugins")]
    Wasi(#[source] wasmtime::Error),
    #[error("cannot define reel:policy/types@{version} for plugins")]
    Types {
        version: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    #[error("cannot start the plugins' epoch ticker thread")]
    Ticker(#[source] std::io::Error),
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
        _ => Err(LoadError::UnknownBinary),
    }
}

/// What a component imports and exports, as far as the host cares.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    /// The `reel:policy` version it implements.
    pub version: String,
    /// The interfaces it exports, in [`Interface::ALL`] order.
    pub exports: Vec<Interface>,
    /// Every import, as `package/interface@version`.
    pub imports: Vec<String>,
}

fn inspect(engine: &Engine, component: &Component) -> Result<Shape, LoadError> {
    let ty = component.component_type();
    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        check_import(name)?;
        imports.push(name.to_owned());
    }
    let mut versions = Vec::new();
    let mut exports = Vec::new();
    for (name, _) in ty.exports(engine) {
        let Some(rest) = name.strip_prefix("reel:policy/") else { continue };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        if !versions.contains(&version) {
            versions.push(version);
        }
        if let Some(i) = Interface::parse(iface) {
            exports.push(i);
        }
    }
    let version = match versions.as_slice() {
        [] => return Err(LoadError::NoPolicyExports),
        [v] => v.to_string(),
        _ => return Err(LoadError::SeveralVersions { versions: versions.iter().map(|v| v.to_string()).collect() }),
    };
    if !SUPPORTED_WIT_VERSIONS.contains(&version.as_str()) {
        return Err(LoadError::UnsupportedVersion { version });
    }
    for name in &imports {
        if let Some(v) = name.strip_prefix("reel:policy/").and_then(|r| r.split_once('@')).map(|(_, v)| v) {
            if v != version {
                return Err(LoadError::VersionMismatch { import: name.clone(), version });
            }
        }
    }
    exports.sort();
    if exports.is_empty() {
        return Err(LoadError::NoInterfaces { version });
    }
    Ok(Shape { version, exports, imports })
}

/// Imports the host provides: what Rust's `std` needs, with nothing behind it.
fn check_import(name: &str) -> Result<(), LoadError> {
    let package = name.split('/').next().unwrap_or(name);
    let not_granted = |hint| Err(LoadError::ImportNotGranted { import: name.to_owned(), hint });
    match package {
        // Filesystem and sockets are linked empty: opening anything fails.
        "wasi:cli" | "wasi:io" | "wasi:random" | "wasi:clocks" | "wasi:filesystem" | "wasi:sockets" => Ok(()),
        "reel:policy" if name.starts_with("reel:policy/types@") => Ok(()),
        "wasi:http" => not_granted("plugins get no network; return a callback request instead"),
        _ => Err(LoadError::ImportUnknown { import: name.to_owned() }),
    }
}

/// A loaded plugin, ready to decide.
pub(crate) struct Plugin {
    pub name: String,
    /// Size of the component in bytes.
    pub size: usize,
    pub shape: Shape,
    /// Its compiled form's file name in the cache directory, if cached.
    pub cache_file: Option<String>,
    pre: InstancePre<CallState>,
    adapter: v0_1_0::Adapter,
    grants: CallGrants,
    rt: Arc<Inner>,
    pub log: LogLimiter,
}

impl Plugin {
    pub fn exports(&self, interface: Interface) -> bool {
        self.shape.exports.contains(&interface)
    }

    fn call(&self) -> Call<'_> {
        Call { rt: &self.rt, pre: &self.pre, grants: &self.grants, name: &self.name }
    }

    /// `Ok(Err(reason))`: the plugin refuses the publish.
    pub fn admit(&self, env: CallEnv, s: &StreamInfo) -> Result<Result<(), String>, Failure> {
        self.adapter.admit(&self.call(), env, s)
    }

    pub fn select(&self, env: CallEnv, s: &StreamInfo, c: &[Candidate]) -> Result<Option<String>, Failure> {
        self.adapter.select(&self.call(), env, s, c)
    }

    pub fn plan(&self, env: CallEnv, s: &StreamInfo, c: Format, default: Plan) -> Result<Plan, Failure> {
        self.adapter.plan(&self.call(), env, s, c, default)
    }

    pub fn name_file(&self, env: CallEnv, s: &StreamInfo, f: &FileInfo) -> Result<String, Failure> {
        self.adapter.name_file(&self.call(), env, s, f)
    }

    pub fn on_file(
        &self,
        env: CallEnv,
        s: &StreamInfo,
        f: &FileInfo,
        url: &str,
    ) -> Result<Option<CallbackRequest>, Failure> {
        self.adapter.on_file(&self.call(), env, s, f, url)
    }

    /// Instantiates the plugin once, calling nothing (for benchmarks).
    pub fn instantiate_only(&self) -> Result<(), Failure> {
        self.call().run(|_, _| Ok(Ok(())))
    }

    /// Names `f` `n` times in one instance and returns the time the calls took (for
    /// benchmarks: decisions never share an instance).
    pub fn warm_naming(&self, s: &StreamInfo, f: &FileInfo, n: u32) -> Result<Duration, Failure> {
        self.adapter.warm_naming(&self.call(), CallEnv::now(), s, f, n)
    }
}

/// The grants of one plugin, resolved once at load.
#[derive(Debug)]
struct CallGrants {
    clocks: bool,
    stderr: bool,
    env: Vec<(String, String)>,
    /// Its linear-memory cap.
    memory: usize,
    /// Output lines logged in the current second, and the second (rate limit).
    output: std::sync::Mutex<(u64, u32)>,
}

/// Bytes of stdout or stderr kept from one call (more is dropped).
const OUTPUT_CAPACITY: usize = 16 * 1024;
/// Output lines a plugin may log per second; more are counted, not logged.
const OUTPUT_LINES_PER_SECOND: u32 = 20;

impl CallGrants {
    fn new(g: &Grants, memory: usize) -> CallGrants {
        let env = g.env.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
        CallGrants { clocks: g.clocks, stderr: g.stderr, env, memory, output: Default::default() }
    }

    /// The WASI context of one call, and (with `stderr` granted) the pipes its stdout and
    /// stderr go to.
    fn wasi(&self) -> (WasiCtx, Option<[MemoryOutputPipe; 2]>) {
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if !self.clocks {
            b.wall_clock(Frozen).monotonic_clock(Frozen);
        }
        let pipes =
            self.stderr.then(|| [MemoryOutputPipe::new(OUTPUT_CAPACITY), MemoryOutputPipe::new(OUTPUT_CAPACITY)]);
        if let Some([out, err]) = &pipes {
            b.stdout(out.clone()).stderr(err.clone());
        }
        if !self.env.is_empty() {
            b.envs(&self.env);
        }
        (b.build(), pipes)
    }

    /// Logs what a call printed, a line at a time, at most [`OUTPUT_LINES_PER_SECOND`].
    fn log_output(&self, plugin: &str, pipes: &[MemoryOutputPipe; 2]) {
        for (stream, pipe) in ["stdout", "stderr"].iter().zip(pipes) {
            let text = pipe.contents();
            for line in String::from_utf8_lossy(&text).lines().filter(|l| !l.trim().is_empty()) {
                let second = crate::media::time::now_ms() / 1000;
                let mut o = self.output.lock().unwrap_or_else(|e| e.into_inner());
                if o.0 != second {
                    *o = (second, 0);
                }
                o.1 += 1;
                if o.1 <= OUTPUT_LINES_PER_SECOND {
                    tracing::info!(plugin, stream, "{}", line.chars().take(1000).collect::<String>());
                } else if o.1 == OUTPUT_LINES_PER_SECOND + 1 {
                    tracing::warn!(plugin, "more output this second is not logged");
                }
            }
        }
    }
}

/// A clock stopped at the Unix epoch, for plugins not granted a clock.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The data of one call's store.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    cap: MemoryCap,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory, and remembers a denial so the failure can be told apart from a trap.
struct MemoryCap {
    max: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// One decision's worth of runtime: a fresh store and instance.
struct Call<'a> {
    rt: &'a Inner,
    pre: &'a InstancePre<CallState>,
    grants: &'a CallGrants,
    name: &'a str,
}

impl Call<'_> {
    /// Instantiates into a fresh store under the deadline and memory cap and runs `f`.
    /// `Ok(Err(message))` is the guest's `err`.
    fn run<R: Send>(
        &self,
        f: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<Result<R, String>> + Send,
    ) -> Result<R, Failure> {
        let (wasi, pipes) = self.grants.wasi();
        let state =
            CallState { wasi, table: ResourceTable::new(), cap: MemoryCap { max: self.grants.memory, denied: false } };
        let mut store = Store::new(&self.rt.engine, state);
        store.limiter(|s| &mut s.cap);
        store.set_epoch_deadline(self.rt.deadline_ticks);
        let result =
            off_async_runtime(|| self.pre.instantiate(&mut store).and_then(|instance| f(&mut store, &instance)));
        if let Some(pipes) = &pipes {
            self.grants.log_output(self.name, pipes);
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(Failure::new(FailureReason::Error, message)),
            Err(e) => Err(classify(&store, &e)),
        }
    }
}

fn classify(store: &Store<CallState>, e: &wasmtime::Error) -> Failure {
    let trap = e.downcast_ref::<Trap>();
    let reason = if store.data().cap.denied {
        FailureReason::Memory
    } else if trap == Some(&Trap::Interrupt) {
        FailureReason::Timeout
    } else {
        FailureReason::Trap
    };
    let message = match (reason, trap) {
        (FailureReason::Memory, _) => format!("denied linear memory beyond {} bytes ({e})", store.data().cap.max),
        (FailureReason::Timeout, _) => "ran past its deadline".to_owned(),
        (_, Some(t)) => t.to_string(),
        (_, None) => format!("{e:#}"),
    };
    Failure::new(reason, message)
}

/// Runs `f` where WASI's host functions may block: they drive futures with
/// `Handle::block_on`, which panics on a Tokio worker. On a multi-threaded runtime the worker
/// hands its other tasks off for the duration (`block_in_place`, which just runs `f` on a
/// blocking-pool thread); on a current-thread runtime `f` runs on a short-lived thread.
fn off_async_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_component() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        let core = check_header(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(core, LoadError::CoreModule) && core.to_string().contains("core WebAssembly module"));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn a_compile_error_keeps_the_compilers_reason_as_its_source() {
        let rt = Runtime::new(Duration::from_millis(100), 16 << 20).unwrap();
        let Err(err) = rt.load_bytes("x", b"\0asm\x0d\0\x01\0garbage", &[], &Grants::default(), None, None) else {
            panic!("a truncated component loaded");
        };
        assert!(matches!(err, LoadError::Compile(_)), "{err:?}");
        assert_eq!(err.to_string(), "cannot compile it");
        let source = std::error::Error::source(&err).expect("the compiler's reason");
        assert!(!source.to_string().is_empty());
    }

    #[test]
    fn grants_only_what_std_needs() {
        assert!(check_import("wasi:cli/environment@0.2.6").is_ok());
        assert!(check_import("wasi:io/streams@0.2.0").is_ok());
        assert!(check_import("reel:policy/types@0.1.0").is_ok());
        // Linked with nothing behind them (Python and JavaScript runtimes import them).
        assert!(check_import("wasi:filesystem/types@0.2.6").is_ok());
        assert!(check_import("wasi:sockets/tcp@0.2.6").is_ok());
        assert!(check_import("wasi:http/outgoing-handler@0.2.6")
            .unwrap_err()
            .to_string()
            .contains("imports wasi:http/outgoing-handler@0.2.6, which is not granted"));
        assert!(matches!(check_import("acme:thing/x"), Err(LoadError::ImportUnknown { .. })));
    }
}
