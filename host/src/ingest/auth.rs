//! Publish authentication: the signed-URL checks of `[[auth]]`. Pure: a publish's identity,
//! query parameters and the time in, a verdict out.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::config::{matches, Auth, AuthKind};

/// Why a publish is not authorized (said to the publisher in its RTMP status).
pub type Denied = String;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of two ASCII signatures (case-insensitive hex).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())) == 0
}

/// The CSS signature of `stream` valid until `expires` (Unix seconds).
pub fn css_signature(key: &str, stream: &str, expires: u64) -> (String, String) {
    let tx_time = format!("{expires:X}");
    let digest = Md5::digest(format!("{key}{stream}{tx_time}").as_bytes());
    (hex(&digest), tx_time)
}

/// The HMAC signature of `app`/`stream` valid until `expires` (Unix seconds).
pub fn hmac_signature(key: &str, app: &str, stream: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{app}/{stream}:{expires}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Checks a publish against `rules`: the first rule matching its domain and app decides; no
/// rule, no check.
pub fn check(
    rules: &[Auth],
    domain: &str,
    app: &str,
    stream: &str,
    params: &[(String, String)],
    now_secs: u64,
) -> Result<(), Denied> {
    let Some(rule) = rules.iter().find(|r| matches(&r.domain, domain) && matches(&r.app, app)) else {
        return Ok(());
    };
    let key = rule.resolved_key().map_err(|e| format!("publish authentication is misconfigured: {e}"))?;
    match rule.kind {
        AuthKind::Css => {
            let (Some(secret), Some(time)) = (param(params, "txSecret"), param(params, "txTime")) else {
                return Err("this stream needs a signed URL: txSecret and txTime are missing".into());
            };
            let expires =
                u64::from_str_radix(time, 16).map_err(|_| format!("txTime {time:?} is not a hex Unix time"))?;
            if expires < now_secs {
                return Err(format!("the signed URL expired {} s ago (txTime {time})", now_secs - expires));
            }
            let want = hex(&Md5::digest(format!("{key}{stream}{time}").as_bytes()));
            if !same(secret, &want) {
                return Err("txSecret does not match: the URL was signed with another key or stream name".into());
            }
        }
        AuthKind::Hmac => {
            let (Some(sign), Some(time)) = (param(params, "sign"), param(params, "expires")) else {
                return Err("this stream needs a signed URL: sign and expires are missing".into());
            };
            let expires: u64 = time.parse().map_err(|_| format!("expires {time:?} is not a Unix time"))?;
            if expires < now_secs {
                return Err(format!("the signed URL expired {} s ago", now_secs - expires));
            }
            if !same(sign, &hmac_signature(&key, app, stream, expires)) {
                return Err("sign does not match: the URL was signed with another key, app or stream".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: AuthKind, app: &str) -> Auth {
        Auth { domain: "*".into(), app: app.into(), kind, key: "k3y".into() }
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn css_signed_urls() {
        let rules = [rule(AuthKind::Css, "live")];
        let now = 1_800_000_000;
        let (secret, time) = css_signature("k3y", "cam1", now + 60);
        // The documented example: md5("k3y" + "cam1" + "6B49D23C").
        assert_eq!(time, "6B49D23C");
        assert_eq!(secret, hex(&Md5::digest(b"k3ycam16B49D23C")));
        let ok = p(&[("txSecret", &secret), ("txTime", &time)]);
        assert_eq!(check(&rules, "d", "live", "cam1", &ok, now), Ok(()));
        assert!(check(&rules, "d", "live", "cam2", &ok, now).unwrap_err().contains("does not match"));
        assert!(check(&rules, "d", "live", "cam1", &ok, now + 61).unwrap_err().contains("expired 1 s ago"));
        assert!(check(&rules, "d", "live", "cam1", &[], now).unwrap_err().contains("missing"));
        // Another app is not covered by the rule.
        assert_eq!(check(&rules, "d", "other", "cam1", &[], now), Ok(()));
    }

    #[test]
    fn hmac_signed_urls() {
        let rules = [rule(AuthKind::Hmac, "*")];
        let now = 1_800_000_000;
        let sign = hmac_signature("k3y", "live", "cam1", now + 5);
        let ok = p(&[("expires", &(now + 5).to_string()), ("sign", &sign.to_uppercase())]);
        assert_eq!(check(&rules, "d", "live", "cam1", &ok, now), Ok(()));
        assert!(check(&rules, "d", "vod", "cam1", &ok, now).is_err());
        assert!(check(&rules, "d", "live", "cam1", &ok, now + 6).is_err());
    }
}
