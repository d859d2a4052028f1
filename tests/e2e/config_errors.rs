//! Bad configuration: a clear error naming the key and line, and a non-zero exit.

use std::process::Command;

use crate::common::{test_dir, REEL};

fn serve_with(name: &str, config: &str) -> (bool, String) {
    let dir = test_dir(name);
    std::fs::write(dir.join("bad.toml"), config).unwrap();
    let out = Command::new(REEL).args(["serve", "--config", "bad.toml", "--check"]).current_dir(&dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let (ok, err) = serve_with("unknown-key", "[server]\nrtmp_listen = \"127.0.0.1:1935\"\nrtmp_listne = \"x\"\n");
    assert!(!ok);
    assert!(err.contains("line 3") && err.contains("rtmp_listne"), "{err}");
}

#[test]
fn bad_duration_is_refused_with_its_line() {
    let cfg = "[storage.l]\nkind = \"fs\"\nroot = \"r\"\n[template.t]\nformats = [\"flv\"]\nstorage = \"l\"\ninterval = \"ten minutes\"\n";
    let (ok, err) = serve_with("bad-duration", cfg);
    assert!(!ok);
    assert!(err.contains("line 7") && err.contains("ten minutes"), "{err}");
}

#[test]
fn rule_naming_a_missing_template_is_refused() {
    let (ok, err) = serve_with("missing-template", "[[rule]]\napp = \"live\"\ntemplate = \"nope\"\n");
    assert!(!ok);
    assert!(err.contains("rule[0].template") && err.contains("nope"), "{err}");
}

#[test]
fn an_unknown_name_variable_is_refused_naming_it() {
    let cfg = "[storage.l]\nkind = \"fs\"\nroot = \"r\"\n[template.t]\nformats = [\"flv\"]\nstorage = \"l\"\nname = \"{AppName}/{StreamNmae}\"\n";
    let (ok, err) = serve_with("bad-name", cfg);
    assert!(!ok);
    assert!(err.contains("template.t.name: unknown variable {StreamNmae}"), "{err}");
}

#[test]
fn missing_file_is_refused() {
    let out = Command::new(REEL).args(["serve", "--config", "/nonexistent/reel.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/reel.toml"));
}

#[test]
fn help_explains_commands() {
    let out = Command::new(REEL).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("remux"), "{text}");
    let out = Command::new(REEL).args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config") && text.contains("recordings"), "{text}");
}
