//! The example plugins of `plugins/` as test and benchmark fixtures, built once by this
//! crate's build script (the way a test-components crate does it): one place builds them, every
//! test and bench asks here.
//!
//! ```ignore
//! let wasm = reel_test_plugins::path("misbehave"); // plugins/target/wasm32-wasip2/release/misbehave.wasm
//! ```

use std::path::{Path, PathBuf};

/// Where the built components are.
pub fn dir() -> &'static Path {
    let error = env!("REEL_TEST_PLUGINS_ERROR");
    assert!(
        error.is_empty(),
        "the example plugins did not build (run tests/run, or `rustup target add wasm32-wasip2`): {error}"
    );
    Path::new(env!("REEL_TEST_PLUGINS_DIR"))
}

/// The component of plugin crate `name` (`misbehave`, `tencent-css`, …).
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "no plugin {name} at {}", p.display());
    p
}
