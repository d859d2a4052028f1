//! Builds the plugins workspace (`plugins/`) for wasm32-wasip2 into `plugins/target`, once per
//! change of its sources, and tells the crate where the components are. A failed build does
//! not fail this crate: the error reaches the test that asks for a plugin.

use std::path::{Path, PathBuf};
use std::process::Command;

fn watch(dir: &Path) {
    println!("cargo::rerun-if-changed={}", dir.display());
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let plugins = repo.join("plugins");
    // The sources, not plugins/target (which every build touches).
    for p in ["Cargo.toml", "Cargo.lock"] {
        watch(&plugins.join(p));
    }
    for entry in std::fs::read_dir(&plugins).unwrap().flatten() {
        let p = entry.path();
        if p.join("Cargo.toml").exists() {
            watch(&p.join("Cargo.toml"));
            watch(&p.join("src"));
        }
    }
    watch(&repo.join("guest-sdk/src"));
    watch(&repo.join("guest-sdk/Cargo.toml"));
    watch(&repo.join("wit"));

    let target_dir = plugins.join("target");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output();
    let error = match out {
        Ok(o) if o.status.success() => String::new(),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last: Vec<&str> = err.lines().rev().take(12).collect();
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
        Err(e) => format!("cannot run cargo: {e}"),
    };
    if !error.is_empty() {
        println!("cargo::warning=the example plugins did not build for wasm32-wasip2 (tests that load them will fail): {error}");
    }
    let dir: PathBuf = target_dir.join("wasm32-wasip2/release");
    println!("cargo::rustc-env=REEL_TEST_PLUGINS_DIR={}", dir.display());
    println!("cargo::rustc-env=REEL_TEST_PLUGINS_ERROR={}", error.replace('\n', " "));
}
