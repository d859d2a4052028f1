//! Admission by token: a publish is let in when its query carries the configured token
//! (`rtmp://host/live/cam1?token=…`), and refused with a reason the broadcaster can act on
//! otherwise.
//!
//! ```toml
//! [plugins.gate]
//! path = "plugins/token_gate.wasm"
//! config = { token = "s3cret", param = "token" }
//! ```
//!
//! | key     | default                       |
//! |---------|-------------------------------|
//! | `token` | required: the accepted token  |
//! | `param` | `token`: the query parameter  |

use reel_plugin::{Config, Context, StreamInfo, Verdict};

struct TokenGate;

impl reel_plugin::Setup for TokenGate {
    fn validate(config: Config<'_>) -> Result<(), String> {
        match config.expect_text("token")? {
            Some(t) if !t.is_empty() => {}
            _ => return Err("config key `token` must be set to the token publishers send".into()),
        }
        config.expect_text("param").map(|_| ())
    }
}

impl reel_plugin::Admission for TokenGate {
    fn admit(ctx: &Context, s: &StreamInfo) -> Result<Verdict, String> {
        let config = ctx.config();
        let token = config.text("token").ok_or("config key `token` is not set")?;
        let param = config.text("param").unwrap_or("token");
        Ok(match s.params.iter().find(|(k, _)| k == param) {
            Some((_, v)) if constant_time_eq(v.as_bytes(), token.as_bytes()) => Verdict::Admit,
            Some(_) => Verdict::Refuse(format!("the `{param}` parameter does not match")),
            None => Verdict::Refuse(format!("add `?{param}=…` to the stream name")),
        })
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

reel_plugin::export!(TokenGate: admission, setup);
