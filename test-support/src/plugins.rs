//! The example plugins of `plugins/` as test and bench fixtures: built for `wasm32-wasip2`
//! once per process (Cargo rebuilds only what changed), into `plugins/target`.
//!
//! ```no_run
//! let wasm = reel_test_support::plugins::path("misbehave"); // …/wasm32-wasip2/release/misbehave.wasm
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The plugins workspace.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").join("plugins")
}

/// Builds every plugin of `plugins/` (once per process) and returns each component's path by
/// crate name (`tencent-css` → `…/tencent_css.wasm`). Fails the test with Cargo's message if
/// they do not build (without the target: `rustup target add wasm32-wasip2`; tests/run adds it).
pub fn build() -> &'static BTreeMap<String, PathBuf> {
    static BUILT: OnceLock<Result<BTreeMap<String, PathBuf>, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_now(&workspace())) {
        Ok(m) => m,
        Err(e) => panic!(
            "the example plugins did not build for wasm32-wasip2 (tests/run sets it up; or `rustup target add wasm32-wasip2`): {e}"
        ),
    }
}

/// Where the built components are (`plugins/target/wasm32-wasip2/release`), after [`build`].
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    build();
    DIR.get_or_init(|| release_dir(&workspace()))
}

/// The component of plugin crate `name` (`misbehave`, `tencent-css`, …), after [`build`].
pub fn path(name: &str) -> &'static Path {
    let all = build();
    all.get(name).unwrap_or_else(|| panic!("no example plugin {name}; there are {:?}", all.keys()))
}

fn release_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/wasm32-wasip2/release")
}

/// The package names of the workspace's crates (the folders with a Cargo.toml).
fn crates(workspace: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(workspace).map_err(|e| format!("{}: {e}", workspace.display()))?;
    for entry in entries.flatten() {
        let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else { continue };
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name")?.trim().strip_prefix('=').map(|v| v.trim().trim_matches('"')))
            .ok_or_else(|| format!("no package name in {}", entry.path().join("Cargo.toml").display()))?;
        names.push(name.to_string());
    }
    names.sort();
    Ok(names)
}

fn build_now(workspace: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(workspace.join("target"))
        // The plugins have their own settings: nothing of the build running these tests.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        return Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let dir = release_dir(workspace);
    let mut built = BTreeMap::new();
    for name in crates(workspace)? {
        let wasm = dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !wasm.exists() {
            return Err(format!("cargo built no {}", wasm.display()));
        }
        built.insert(name, wasm);
    }
    Ok(built)
}
