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

    languages(&s, &f);
}

/// The same naming decision from the Rust, Python and JavaScript examples of the mps naming
/// (each a fresh instance per decision). The Python and JavaScript ones are built with their
/// `build.sh` (componentize-py, jco); a language whose tool is missing is skipped.
fn languages(s: &StreamInfo, f: &FileInfo) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("reel-bench-languages-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut plugins = BTreeMap::new();
    plugins.insert("rust".to_string(), reel_test_support::plugins::dir().join("mps.wasm"));
    for (name, example, wasm) in [("python", "python-mps", "python_mps.wasm"), ("javascript", "js-mps", "js_mps.wasm")]
    {
        let built = std::process::Command::new("bash")
            .arg(root.join(format!("plugins/{example}/build.sh")))
            .arg(out.join(wasm))
            .status()
            .is_ok_and(|s| s.success());
        match built {
            true => drop(plugins.insert(name.to_string(), out.join(wasm))),
            false => println!("{name}: not built (its build tool is missing), skipped"),
        }
    }
    println!("\n{:<12} {:>10} {:>16} {:>14} {:>14}", "language", "size", "first load", "p50 decision", "p99 decision");
    for (name, path) in &plugins {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let config = BTreeMap::from([(
            name.clone(),
            PluginConfig {
                path: path.clone(),
                config: Default::default(),
                allow: Grants::default(),
                memory: Some(64 << 20),
            },
        )]);
        let t = Instant::now();
        let registry = match Registry::without_cache(&config, &PolicyConfig::default()) {
            Ok(r) => r,
            Err(e) => {
                println!("{name}: does not load: {e}");
                continue;
            }
        };
        let first = t.elapsed();
        let p = registry.policy(Some(std::slice::from_ref(name)));
        let mut times: Vec<Duration> = (0..300)
            .map(|_| {
                let t = Instant::now();
                black_box(p.name_file(black_box(s), f));
                t.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "{name:<12} {:>8.1} MB {:>14.2} s {:>11.3} ms {:>11.3} ms",
            size as f64 / 1e6,
            first.as_secs_f64(),
            times[150].as_secs_f64() * 1e3,
            times[296].as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
