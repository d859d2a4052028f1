//! Test fixture: tries to read a file, list a directory, resolve a name and open a socket, so
//! its component imports `wasi:filesystem` and `wasi:sockets`, which Reel links with nothing
//! behind them: every attempt fails, and the decision falls back to the built-in one.

use reel_plugin::{Context, FileInfo, StreamInfo};

struct WantsFiles;

impl reel_plugin::Naming for WantsFiles {
    fn name_file(_: &Context, _: &StreamInfo, _: &FileInfo) -> Result<String, String> {
        use std::net::ToSocketAddrs;
        let mut failed = Vec::new();
        match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => return Ok(format!("stolen/{}", text.len())),
            Err(e) => failed.push(format!("read /etc/passwd: {e}")),
        }
        match std::fs::read_dir("/") {
            Ok(_) => return Ok("listed/root".into()),
            Err(e) => failed.push(format!("list /: {e}")),
        }
        match "localhost:80".to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => return Ok("resolved/localhost".into()),
            Ok(None) => failed.push("resolve localhost: no address".into()),
            Err(e) => failed.push(format!("resolve localhost: {e}")),
        }
        match std::net::TcpStream::connect("127.0.0.1:80") {
            Ok(_) => return Ok("connected/127.0.0.1".into()),
            Err(e) => failed.push(format!("connect 127.0.0.1:80: {e}")),
        }
        Err(failed.join("; "))
    }
}

reel_plugin::export!(WantsFiles: naming);
