//! Publish authentication (CSS-style and HMAC signed URLs) and the API token, end to end.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use crate::common::*;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Publishes `src` to `url`; whether ffmpeg succeeded.
fn publish(src: &std::path::Path, url: &str) -> bool {
    Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(src)
        .args(["-c", "copy", "-f", "flv", url])
        .status()
        .unwrap()
        .success()
}

/// The folders (APP/STREAM) holding an FLV recording, sorted.
fn recorded_folders(reel: &Reel) -> Vec<String> {
    files(&reel.recordings(), "flv")
        .iter()
        .map(|p| p.strip_prefix(reel.recordings()).unwrap().parent().unwrap().display().to_string())
        .collect()
}

fn get(port: u16, path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let (_, head, body) = http_raw(port, path, &auth);
    format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body))
}

#[test]
fn signed_publish_urls_are_checked_per_app() {
    let config = format!(
        "{BASE_CONFIG}\n[[auth]]\napp = \"secure\"\nkind = \"css\"\nkey = \"k3y\"\n\n[[auth]]\napp = \"hmac\"\nkind = \"hmac\"\nkey = \"env:REEL_TEST_AUTH_KEY\"\n"
    );
    std::env::set_var("REEL_TEST_AUTH_KEY", "h-key");
    let reel = Reel::start("auth", &config);
    let src = fixture("av", 2, true, true);
    let base = |app: &str, stream: &str| reel.url(app, stream);

    // Unsigned: fine where no rule applies, refused where one does.
    assert!(publish(&src, &base("live", "open")));
    assert!(!publish(&src, &base("secure", "cam")), "an unsigned publish to a protected app is refused");
    // CSS: txSecret = md5(key + StreamName + txTime), txTime the expiry in hex.
    let t = format!("{:X}", now() + 300);
    let secret = hex(&Md5::digest(format!("k3y{}{t}", "cam").as_bytes()));
    assert!(publish(&src, &format!("{}?txSecret={secret}&txTime={t}", base("secure", "cam"))), "{}", reel.log_text());
    let old = format!("{:X}", now() - 10);
    let stale = hex(&Md5::digest(format!("k3ycam{old}").as_bytes()));
    assert!(!publish(&src, &format!("{}?txSecret={stale}&txTime={old}", base("secure", "cam2"))));
    assert!(!publish(&src, &format!("{}?txSecret={secret}&txTime={t}", base("secure", "other"))));
    // HMAC-SHA256 over "{app}/{stream}:{expires}", key from the environment.
    let exp = now() + 300;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"h-key").unwrap();
    mac.update(format!("hmac/cam:{exp}").as_bytes());
    let sign = hex(&mac.finalize().into_bytes());
    assert!(publish(&src, &format!("{}?expires={exp}&sign={sign}", base("hmac", "cam"))), "{}", reel.log_text());
    assert!(!publish(&src, &format!("{}?expires={exp}&sign={}", base("hmac", "cam2"), &sign)));

    std::thread::sleep(Duration::from_millis(500));
    let log = reel.log_text();
    assert!(log.contains("publish not authorized: the signed URL expired"), "{log}");
    assert!(log.contains("publish not authorized: this stream needs a signed URL"), "{log}");
    let recorded = recorded_folders(&reel);
    assert_eq!(recorded, ["hmac/cam", "live/open", "secure/cam"], "only the authorized publishes recorded");
}

#[test]
fn the_api_token_guards_everything_but_the_probes() {
    let reel = Reel::start("api-token", &format!("api_token = \"t0ken\"\n{BASE_CONFIG}"));
    let port = reel.http_port;
    assert!(get(port, "/v1/streams", None).starts_with("HTTP/1.1 401"));
    assert!(get(port, "/v1/streams", Some("wrong")).starts_with("HTTP/1.1 401"));
    assert!(get(port, "/v1/streams", Some("t0ken")).starts_with("HTTP/1.1 200"));
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert!(get(port, open, None).starts_with("HTTP/1.1 200"), "{open}");
    }
}

/// An admission plugin lets in only the publishes whose query carries its token; the others
/// are refused at publish with the plugin's reason, and nothing of theirs is recorded.
#[test]
fn an_admission_plugin_decides_who_may_publish() {
    let wasm = reel_test_support::plugins::path("token-gate");
    let config = format!(
        "{BASE_CONFIG}\n[plugins.gate]\npath = \"{}\"\nconfig = {{ token = \"let-me-in\" }}\n[policy]\nplugins = [\"gate\"]\n",
        wasm.display()
    );
    let reel = Reel::start("admission", &config);
    let src = fixture("av", 2, true, true);
    assert!(publish(&src, &format!("{}?token=let-me-in", reel.url("live", "good"))), "{}", reel.log_text());
    assert!(!publish(&src, &format!("{}?token=guess", reel.url("live", "wrong"))));
    assert!(!publish(&src, &reel.url("live", "none")));
    std::thread::sleep(Duration::from_millis(500));
    let log = reel.log_text();
    assert!(log.contains("refused by plugin gate: the `token` parameter does not match"), "{log}");
    assert!(log.contains("refused by plugin gate: add `?token=…` to the stream name"), "{log}");
    let recorded = recorded_folders(&reel);
    assert_eq!(recorded, ["live/good"], "only the admitted publish recorded");
}
