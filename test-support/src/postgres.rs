//! A real, throw-away PostgreSQL server for tests: `initdb` and `pg_ctl start` in a fresh
//! temporary directory, listening on 127.0.0.1 only (its unix socket in that directory too), with
//! a database `reel` owned by the user `reel`, password `reel`. Stopped and removed on drop.
//!
//! `initdb` refuses to run as root, so as root the server's tools run as the `postgres` system
//! user (through `runuser`), which must exist; nothing is created for it here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds `pg_ctl` waits for the server to start or stop, and clients wait to connect.
const TIMEOUT_SECS: &str = "30";

/// A running PostgreSQL server, stopped (`pg_ctl stop -m immediate`) and deleted on drop.
pub struct Postgres {
    /// `postgres://reel:reel@127.0.0.1:PORT/reel`.
    pub url: String,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The temporary directory: the data directory `data`, the log `server.log` and the socket.
    pub dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
    started: bool,
}

impl Postgres {
    /// Starts a fresh server. Returns `None` (and says why on stderr) when PostgreSQL's server
    /// binaries are not installed, or when running as root without a `postgres` user to run
    /// them as. Fails the test, with the server's log, when the server does not come up.
    pub fn start() -> Option<Postgres> {
        let Some(bindir) = find_bindir() else {
            eprintln!("PostgreSQL is not installed (no initdb found): tests/run installs it");
            return None;
        };
        let as_postgres = is_root();
        if as_postgres && !Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) {
            eprintln!("running as root and there is no `postgres` user to run PostgreSQL as (initdb refuses root)");
            return None;
        }
        let port = free_port();
        let mut pg = Postgres {
            url: format!("postgres://reel:reel@127.0.0.1:{port}/reel"),
            port,
            dir: unique_dir(),
            bindir,
            as_postgres,
            started: false,
        };
        std::fs::create_dir_all(&pg.dir).unwrap_or_else(|e| panic!("create {}: {e}", pg.dir.display()));
        if as_postgres {
            checked(Command::new("chown").arg("-R").arg("postgres:").arg(&pg.dir), "");
        }
        let data = pg.dir.join("data");

        let mut initdb = pg.tool("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        checked(&mut initdb, "");

        let sock = pg.dir.to_str().unwrap_or_else(|| panic!("non-UTF-8 temp dir {}", pg.dir.display()));
        let mut start = pg.tool("pg_ctl");
        start.arg("-D").arg(&data).arg("-l").arg(pg.log_path()).args(["-w", "-t", TIMEOUT_SECS, "-o"]);
        start.arg(format!("-c listen_addresses=127.0.0.1 -p {port} -k '{sock}' -c fsync=off")).arg("start");
        pg.started = true; // From here on, drop stops it (stopping a server that is not up is harmless).
        checked(&mut start, &pg.log());

        let mut psql = pg.tool("psql");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", &port.to_string()]);
        psql.args(["-U", "postgres", "-d", "postgres"]);
        psql.args(["-c", "CREATE ROLE reel LOGIN PASSWORD 'reel'", "-c", "CREATE DATABASE reel OWNER reel"]);
        checked(&mut psql, &pg.log());
        Some(pg)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no server log: {e})"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A command running the tool `name` of the server's binaries, as `postgres` when root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The `postgres` user may not be allowed into the current directory.
        cmd.current_dir(&self.dir).env("PGCONNECT_TIMEOUT", TIMEOUT_SECS);
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.started {
            let mut stop = self.tool("pg_ctl");
            stop.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "-t", TIMEOUT_SECS, "stop"]);
            match stop.output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("{stop:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("cannot run {stop:?}: {e}"),
            }
        }
        if std::thread::panicking() || std::env::var_os("REEL_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory of PostgreSQL's server binaries: `pg_config --bindir`, else the highest
/// version under /usr/lib/postgresql, else the directory on `PATH` that has `initdb`.
fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && has_initdb(&d) {
            return Some(d);
        }
    }
    let versioned = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten().filter_map(|e| {
        let version: Vec<u32> = e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let bin = e.path().join("bin");
        has_initdb(&bin).then_some((version, bin))
    });
    if let Some((_, bin)) = versioned.max() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_initdb(d))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A port free on 127.0.0.1 just now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A new path under the temp dir, unique across processes and calls.
fn unique_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("reel-pg-{}-{n}-{nanos}", std::process::id()))
}

/// Runs `cmd`; fails the test with its output (and `log`, the server's log) unless it succeeds.
fn checked(cmd: &mut Command, log: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}\nserver log:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    #[test]
    fn starts_and_accepts_connections() {
        let Some(pg) = Postgres::start() else {
            eprintln!("skipped: no PostgreSQL");
            return;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], pg.port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}\nserver log:\n{}", pg.log()));

        // Over TCP, as whoever runs the test: the password in the URL is checked (scram-sha-256).
        let mut psql = Command::new(pg.bindir.join("psql"));
        psql.args(["-X", "-tA"]).arg(&pg.url).args(["-c", "select 1"]).env("PGCONNECT_TIMEOUT", TIMEOUT_SECS);
        let out = checked(&mut psql, &pg.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}
