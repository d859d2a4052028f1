//! What a policy decision costs: the built-in policy against a WebAssembly plugin.
//!
//! `cargo bench -p reel --bench policy` (it builds the plugins for wasm32-wasip2 through
//! `reel-test-support`). Prints ns per decision for the builtin and for plugins (each decision a
//! fresh instance, as Reel runs them), µs per instantiation, and ns per call into an already
//! instantiated plugin.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use reel::policy::{Builtin, FileInfo, Format, Grants, Plan, PluginConfig, Policy, PolicyConfig, Registry, StreamInfo};

/// Runs `f` for about `budget` after a warm-up; returns ns per iteration (best of 5 rounds).
fn per_iter(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget / 10 {
        f();
        n += 1;
    }
    let per_round = (n * 2).max(10);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_round as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = reel_test_support::plugins::dir();
    let plugins = BTreeMap::from([
        (
            "defaults".to_string(),
            PluginConfig {
                path: dir.join("defaults.wasm"),
                config: Default::default(),
                allow: Grants::default(),
                memory: None,
            },
        ),
        (
            "tencent".to_string(),
            PluginConfig {
                path: dir.join("tencent_css.wasm"),
                config: toml::from_str(r#"key = "k""#).unwrap(),
                allow: Grants::default(),
                memory: None,
            },
        ),
    ]);
    let load = Instant::now();
    let registry = Registry::without_cache(&plugins, &PolicyConfig::default()).expect("load plugins");
    println!("load + compile 2 plugins (no cache): {:.1} ms", load.elapsed().as_secs_f64() * 1e3);
    let data = std::env::temp_dir().join(format!("reel-bench-{}", std::process::id()));
    drop(Registry::new(&plugins, &PolicyConfig::default(), &data).expect("load plugins"));
    let load = Instant::now();
    drop(Registry::new(&plugins, &PolicyConfig::default(), &data).expect("load plugins"));
    println!("load 2 plugins from the compile cache: {:.1} ms", load.elapsed().as_secs_f64() * 1e3);
    let _ = std::fs::remove_dir_all(&data);

    let s = StreamInfo {
        domain: "push.example.com".into(),
        app: "live".into(),
        name: "cam1".into(),
        params: vec![("txSecret".into(), "abc".into())],
        video_codec: Some("h264".into()),
        audio_codec: Some("aac".into()),
        started_at_ms: 1_795_352_700_000,
    };
    let f = FileInfo {
        container: Format::Flv,
        sequence: 3,
        start_ms: 1_795_352_709_120,
        end_ms: 1_795_354_509_000,
        size: 10_485_760,
        duration_ms: 1_799_880,
        key: "live/cam1/a.flv".into(),
        session_id: "s-1".into(),
        task_id: None,
        random_id: "9f2c4e1a7b3d5c60".into(),
    };
    let plan = Plan { interval_ms: 1_800_000, hls_segment_ms: 6_000, resume_window_ms: 180_000 };
    let budget = Duration::from_millis(1500);

    let defaults = registry.policy(Some(&["defaults".to_string()]));
    let tencent = registry.policy(Some(&["tencent".to_string()]));

    println!("\n{:<44} {:>12}", "decision", "ns/decision");
    let row = |what: &str, ns: f64| println!("{what:<44} {ns:>12.0}");
    row(
        "builtin naming",
        per_iter(budget, || {
            black_box(Builtin.name_file(black_box(&s), &f));
        }),
    );
    row(
        "builtin callback",
        per_iter(budget, || {
            black_box(Builtin.on_file(black_box(&s), &f, "http://cb/"));
        }),
    );
    row(
        "plugin naming (defaults, fresh instance)",
        per_iter(budget, || {
            black_box(defaults.name_file(black_box(&s), &f));
        }),
    );
    row(
        "plugin plan (defaults, fresh instance)",
        per_iter(budget, || {
            black_box(defaults.plan(black_box(&s), Format::Hls, plan));
        }),
    );
    row(
        "plugin naming (tencent-css, fresh instance)",
        per_iter(budget, || {
            black_box(tencent.name_file(black_box(&s), &f));
        }),
    );
    row(
        "plugin callback (tencent-css, md5 signed)",
        per_iter(budget, || {
            black_box(tencent.on_file(black_box(&s), &f, "http://cb/"));
        }),
    );

    let inst = per_iter(budget, || registry.instantiate_only("defaults").unwrap());
    println!("\ninstantiation (fresh store + instance, no call): {:.1} µs", inst / 1e3);
    let warm = |name: &str| {
        let n = 1_000;
        (0..20)
            .map(|_| registry.warm_naming(name, &s, &f, n).unwrap().as_nanos() as f64 / n as f64)
            .fold(f64::INFINITY, f64::min)
    };
    println!("warm call into a live instance, naming (defaults): {:.0} ns", warm("defaults"));
    println!("warm call into a live instance, naming (tencent-css): {:.0} ns", warm("tencent"));
}
