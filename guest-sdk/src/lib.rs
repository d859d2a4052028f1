//! Guest SDK for Reel policy plugins (WIT components built for wasm32-wasip2).
