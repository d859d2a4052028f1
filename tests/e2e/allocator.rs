//! `reel serve` runs with glibc's per-thread cache of freed small blocks off (see `main.rs`):
//! the process starts itself again with the tunable set, keeping its PID, and an operator's
//! own setting is left as given.

use crate::common::*;

/// The `GLIBC_TUNABLES` a running process was (last) started with. Some glibc versions cut the
/// variable at each `:` in place while reading it, so the tunables after the first show up in
/// `/proc/PID/environ` as entries of their own after it: they are joined back.
fn start_tunables(reel: &Reel) -> Option<String> {
    let pid = reel.child.as_ref().expect("running").id();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let entries: Vec<String> = env.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    let at = entries.iter().position(|e| e.starts_with("GLIBC_TUNABLES="))?;
    let mut parts = vec![entries[at]["GLIBC_TUNABLES=".len()..].to_owned()];
    parts.extend(entries[at + 1..].iter().take_while(|e| e.starts_with("glibc.")).cloned());
    Some(parts.join(":"))
}

#[test]
fn serve_runs_without_the_thread_cache_in_the_same_process_and_keeps_an_operators_setting() {
    // The process the test started (same PID) was started again with the tunable.
    let plain = Reel::start("allocator-default", BASE_CONFIG);
    assert_eq!(start_tunables(&plain).as_deref(), Some("glibc.malloc.tcache_count=0"));
    assert!(!plain.log_text().contains("restarting without it failed"), "{}", plain.log_text());

    // Other tunables are kept and the cache's is added after them.
    let other = Reel::start_with_env(
        test_dir("allocator-other"),
        BASE_CONFIG,
        &[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=262144")],
    );
    assert_eq!(
        start_tunables(&other).as_deref(),
        Some("glibc.malloc.trim_threshold=262144:glibc.malloc.tcache_count=0")
    );

    // An operator's own cache setting is not overridden (and the process is not restarted).
    let own = Reel::start_with_env(
        test_dir("allocator-own"),
        BASE_CONFIG,
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")],
    );
    assert_eq!(start_tunables(&own).as_deref(), Some("glibc.malloc.tcache_count=7"));
}
