//! `reel serve` runs with glibc's per-thread cache of freed small blocks off (see `main.rs`):
//! the process starts itself again with the tunable set, keeping its PID, and an operator's
//! own setting is left as given.

use crate::common::*;

/// The environment a running process was (last) started with, as glibc left it: glibc cuts
/// `GLIBC_TUNABLES` at each `:` in place while it reads it, so the tunables show up as entries
/// of their own after the variable.
fn start_env(reel: &Reel) -> Vec<String> {
    let pid = reel.child.as_ref().expect("running").id();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

fn has(env: &[String], entry: &str) -> bool {
    env.iter().any(|e| e == entry)
}

#[test]
fn serve_runs_without_the_thread_cache_in_the_same_process_and_keeps_an_operators_setting() {
    // The process the test started (same PID) was started again with the tunable.
    let plain = Reel::start("allocator-default", BASE_CONFIG);
    let env = start_env(&plain);
    assert!(has(&env, "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"), "{env:?}");
    assert!(!plain.log_text().contains("restarting without it failed"), "{}", plain.log_text());

    // Other tunables are kept and the cache's is added after them.
    let other = Reel::start_with_env(
        test_dir("allocator-other"),
        BASE_CONFIG,
        &[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=262144")],
    );
    let env = start_env(&other);
    let at = env.iter().position(|e| e == "GLIBC_TUNABLES=glibc.malloc.trim_threshold=262144");
    assert!(at.is_some_and(|i| env.get(i + 1).is_some_and(|e| e == "glibc.malloc.tcache_count=0")), "{env:?}");

    // An operator's own cache setting is not overridden (and the process is not restarted).
    let own = Reel::start_with_env(
        test_dir("allocator-own"),
        BASE_CONFIG,
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")],
    );
    let env = start_env(&own);
    assert!(has(&env, "GLIBC_TUNABLES=glibc.malloc.tcache_count=7"), "{env:?}");
    assert!(!env.iter().any(|e| e.contains("tcache_count=0")), "{env:?}");
}
