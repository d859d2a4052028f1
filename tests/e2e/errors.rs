//! What a user sees when something is wrong: each cause once, naming what and where.

use std::process::Command;

use crate::common::*;

fn fails(args: &[&str]) -> String {
    let out = Command::new(REEL).args(args).output().unwrap();
    assert!(!out.status.success(), "reel {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn os_errors_are_printed_once_with_the_path() {
    let dir = test_dir("errors");
    let out = dir.join("x.mp4");
    let cases = [
        vec!["remux", "/nonexistent/x.flv", "-f", "mp4", "-o", out.to_str().unwrap()],
        vec!["serve", "--config", "/nonexistent/reel.toml"],
        vec!["recover", "/nonexistent/x.part", "-o", out.to_str().unwrap()],
    ];
    for args in cases {
        let err = fails(&args);
        assert_eq!(err.matches("os error 2").count(), 1, "reel {args:?}:\n{err}");
        assert!(err.contains("/nonexistent/"), "names the path: {err}");
    }
}

#[test]
fn a_file_that_is_no_plugin_is_refused_with_the_reason_once() {
    let dir = test_dir("errors-plugin");
    let bogus = dir.join("bogus.wasm");
    std::fs::write(&bogus, b"hello, not wasm").unwrap();
    let err = fails(&["plugin", "check", bogus.to_str().unwrap()]);
    assert_eq!(err.matches("not a WebAssembly file").count(), 1, "{err}");
    assert!(err.contains("bogus.wasm"), "{err}");
    let err = fails(&["plugin", "check", "/nonexistent/p.wasm"]);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/p.wasm"), "{err}");
    // A component header with garbage after it: our reason once, then the compiler's.
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let err = fails(&["plugin", "check", broken.to_str().unwrap()]);
    assert_eq!(err.matches("cannot compile it").count(), 1, "{err}");
    let cause = err.split_once("cannot compile it: ").map(|(_, c)| c.trim()).unwrap_or("");
    assert!(!cause.is_empty(), "the compiler's reason follows: {err}");
}
