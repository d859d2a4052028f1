//! S3 PUTs of spooled bytes straight from the page cache (`sendfile(2)`), for `http://`
//! endpoints.
//!
//! Every byte of a recording is in the spool file before it goes to S3. Handing it to an HTTP
//! client means one copy from user space into the socket per byte: measured in `bench/s3.sh`
//! it was the largest cost of recording to S3 over recording to local disk. Here a part or a
//! small object is one request on its own connection: the head (signed with SigV4 by
//! `object_store`'s authorizer, the same signature its client makes), then the body by
//! `sendfile` from the spool file, then the answer's status and `ETag`. Over `https://` the
//! body must go through TLS in user space, so uploads there stay with `object_store`.
//!
//! Every wait has a deadline: the connection (`connect`) and the request as a whole
//! (`timeout`). The socket is the runtime's (non-blocking): a slow link holds no thread. The
//! signature's body hash, when the payload is signed, is computed on the blocking pool. Answers
//! are read up to 64 KiB.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How an object key is written in the request path (as `object_store` writes it: what the
/// signature covers).
const PATH_SET: AsciiSet = QUERY_SET.remove(b'/');
const QUERY_SET: AsciiSet = NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// The most of an answer (head and body) read.
const MAX_ANSWER: usize = 64 << 10;

type Result<T> = std::result::Result<T, object_store::Error>;

/// Where and how to send: a path-style `http://` endpoint and its credentials.
pub struct DirectPut {
    /// `http://host:port`, without a trailing slash.
    endpoint: String,
    /// `host:port`, what is connected to.
    authority: String,
    bucket: String,
    region: String,
    credential: AwsCredential,
    sign_payload: bool,
    connect: Duration,
    timeout: Duration,
}

impl DirectPut {
    /// For a path-style `http://` endpoint; `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        sign_payload: bool,
        connect: Duration,
        timeout: Duration,
    ) -> Option<Self> {
        let endpoint = endpoint.trim_end_matches('/');
        let authority = endpoint.strip_prefix("http://")?;
        if authority.is_empty() || authority.contains('/') {
            return None;
        }
        Some(Self {
            endpoint: endpoint.into(),
            authority: authority.into(),
            bucket: bucket.into(),
            region: region.into(),
            credential: AwsCredential { key_id: access_key.into(), secret_key: secret_key.into(), token: None },
            sign_payload,
            connect,
            timeout,
        })
    }

    /// Uploads `len` bytes of `file` from `from` as part `index` (0-based) of the multipart
    /// upload `id` of `key` (an object path as `object_store` writes it); returns the part's
    /// ETag.
    pub async fn put_part(
        &self,
        key: &str,
        id: &str,
        index: usize,
        file: &Path,
        from: u64,
        len: u64,
    ) -> Result<String> {
        let query = format!("partNumber={}&uploadId={}", index + 1, utf8_percent_encode(id, &QUERY_SET));
        self.put(key, Some(&query), file, from, len).await
    }

    /// Uploads `len` bytes of `file` from `from` as the object `key`; returns its ETag.
    pub async fn put_object(&self, key: &str, file: &Path, from: u64, len: u64) -> Result<String> {
        self.put(key, None, file, from, len).await
    }

    /// One request, tried again (twice at most, 100 then 200 ms later) after a failure that is
    /// not a refusal, all within `timeout`.
    async fn put(&self, key: &str, query: Option<&str>, file: &Path, from: u64, len: u64) -> Result<String> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(100);
        for attempt in 0.. {
            let r = match tokio::time::timeout_at(deadline, self.send(key, query, file, from, len)).await {
                Ok(r) => r,
                Err(_) => return Err(generic(key, format!("no answer within {:?}", self.timeout))),
            };
            match r {
                Err(e) if attempt < 2 && !refused(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(key, error = &e as &dyn std::error::Error, "upload request failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    async fn send(&self, key: &str, query: Option<&str>, file: &Path, from: u64, len: u64) -> Result<String> {
        let f = std::fs::File::open(file).map_err(|e| generic(key, format!("spool file {}: {e}", file.display())))?;
        let size = f.metadata().map_err(|e| generic(key, e))?.len();
        if size < from + len {
            return Err(generic(key, format!("the spooled file {} is shorter than its part", file.display())));
        }
        let f = Arc::new(f);
        let digest = if self.sign_payload {
            let f = f.clone();
            let d = tokio::task::spawn_blocking(move || digest(&f, from, len)).await.map_err(|e| generic(key, e))?;
            Some(d.map_err(|e| generic(key, e))?)
        } else {
            None
        };
        let path = format!("/{}/{}", self.bucket, utf8_percent_encode(key, &PATH_SET));
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(format!("{}{target}", self.endpoint))
            .body(HttpRequestBody::empty())
            .map_err(|e| generic(key, e))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .with_sign_payload(self.sign_payload)
            .authorize(&mut req, digest.as_ref().map(|d| d.as_slice()));
        let mut head = format!("PUT {target} HTTP/1.1\r\n");
        for (name, value) in req.headers() {
            let value = value.to_str().map_err(|e| generic(key, e))?;
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {len}\r\nconnection: close\r\n\r\n"));

        let mut sock = match tokio::time::timeout(self.connect, TcpStream::connect(self.authority.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(io_err(key, "connecting", e)),
            Err(_) => return Err(generic(key, format!("connecting: no connection within {:?}", self.connect))),
        };
        let _ = sock.set_nodelay(true);
        sock.write_all(head.as_bytes()).await.map_err(|e| io_err(key, "sending the head", e))?;
        let mut offset = from as libc::off_t;
        let end = offset + len as libc::off_t;
        while offset < end {
            sock.writable().await.map_err(|e| io_err(key, "sending the body", e))?;
            let want = (end - offset).min(1 << 30) as usize;
            let sent = sock.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the call; `offset` is a valid off_t.
                let n = unsafe { libc::sendfile(sock.as_raw_fd(), f.as_raw_fd(), &mut offset, want) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match sent {
                Ok(0) => return Err(generic(key, "the spooled file ended early")),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(io_err(key, "sending the body", e)),
            }
        }
        let answer = read_answer(&mut sock).await.map_err(|e| io_err(key, "reading the answer", e))?;
        answer.into_etag(key)
    }
}

/// SHA-256 of the range, read through a mapping (no buffer filled).
fn digest(f: &std::fs::File, from: u64, len: u64) -> std::io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    if len == 0 {
        return Ok(Sha256::digest(b"").into());
    }
    // SAFETY: read-only and private, over a range the caller checked is written and final.
    let map = unsafe { memmap2::MmapOptions::new().offset(from).len(len as usize).map(f)? };
    Ok(Sha256::digest(&map[..]).into())
}

struct Answer {
    status: u16,
    etag: Option<String>,
    body: String,
}

impl Answer {
    fn into_etag(self, key: &str) -> Result<String> {
        let why = || format!("HTTP {}: {}", self.status, self.body.trim());
        match self.status {
            200..=299 => self.etag.clone().ok_or_else(|| generic(key, "the answer has no ETag")),
            401 => Err(object_store::Error::Unauthenticated { path: key.into(), source: why().into() }),
            403 => Err(object_store::Error::PermissionDenied { path: key.into(), source: why().into() }),
            _ => Err(generic(key, why())),
        }
    }
}

/// The status, ETag and (up to [`MAX_ANSWER`]) body of an HTTP/1.1 answer.
async fn read_answer(sock: &mut TcpStream) -> std::io::Result<Answer> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_ANSWER {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "an answer's head over 64 KiB"));
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before an answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    let mut etag = None;
    let mut length = None;
    for l in lines {
        if let Some((name, value)) = l.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "etag" => etag = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse::<usize>().ok(),
                _ => {}
            }
        }
    }
    // The body, for an error's words: as long as it says (or until the connection closes),
    // at most MAX_ANSWER.
    let mut body = buf[head_end..].to_vec();
    let want = length.unwrap_or(MAX_ANSWER).min(MAX_ANSWER);
    while body.len() < want {
        match sock.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(_) if !(200..300).contains(&status) => break,
            Err(e) => return Err(e),
        }
    }
    body.truncate(want);
    Ok(Answer { status, etag, body: String::from_utf8_lossy(&body).into_owned() })
}

fn refused(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
}

fn generic(key: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    let e = e.into();
    object_store::Error::Generic { store: "S3", source: format!("{key}: {e}").into() }
}

fn io_err(key: &str, what: &str, e: std::io::Error) -> object_store::Error {
    generic(key, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use object_store::multipart::{MultipartStore, PartId};
    use object_store::path::Path as ObjPath;
    use object_store::ObjectStore;
    use reel_test_support::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

    use super::*;

    fn store(s3: &S3Server) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&s3.endpoint)
            .with_bucket_name(&s3.bucket)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    fn direct(s3: &S3Server, secret: &str, signed: bool) -> DirectPut {
        let (c, t) = (Duration::from_secs(5), Duration::from_secs(20));
        DirectPut::new(&s3.endpoint, &s3.bucket, "us-east-1", ACCESS_KEY, secret, signed, c, t).unwrap()
    }

    fn spool_file(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let path = reel_test_support::ffmpeg::scratch_dir("direct-put").join(name);
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    #[test]
    fn parts_and_objects_sent_from_the_spool_file_arrive_byte_for_byte_signed_or_not() {
        let s3 = S3Server::start("direct").expect("the S3 server (tests/run installs it)");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = store(&s3);
        let (file, data) = spool_file("big.flv", (5 << 20) + 123_457);
        for signed in [true, false] {
            let put = direct(&s3, SECRET_KEY, signed);
            // A multipart upload: its second part first (parts in any order), from offsets.
            let key = format!("rec/multi part {signed}.flv");
            let path = ObjPath::from(key.as_str());
            let id = rt.block_on(store.create_multipart(&path)).unwrap();
            let key = path.as_ref();
            let second = rt.block_on(put.put_part(key, &id, 1, &file, 5 << 20, data.len() as u64 - (5 << 20))).unwrap();
            let first = rt.block_on(put.put_part(key, &id, 0, &file, 0, 5 << 20)).unwrap();
            let parts = vec![PartId { content_id: first }, PartId { content_id: second }];
            rt.block_on(store.complete_multipart(&path, &id, parts)).unwrap();
            let got = rt.block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() });
            assert!(got[..] == data[..], "multipart object differs (signed: {signed})");
            // A whole object from the middle of the file.
            let key = format!("rec/small-{signed}.ts");
            let etag = rt.block_on(put.put_object(&key, &file, 1000, 70_000)).unwrap();
            assert!(!etag.is_empty());
            let got = rt.block_on(async { store.get(&ObjPath::from(key)).await.unwrap().bytes().await.unwrap() });
            assert!(got[..] == data[1000..71_000], "object differs (signed: {signed})");
        }
    }

    #[test]
    fn a_wrong_secret_is_a_permanent_refusal_and_a_silent_server_a_deadline() {
        let s3 = S3Server::start("direct-refused").expect("the S3 server (tests/run installs it)");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (file, _) = spool_file("refused.flv", 100_000);
        let e = rt.block_on(direct(&s3, "not-the-secret", true).put_object("k.flv", &file, 0, 100_000)).unwrap_err();
        assert!(
            matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }),
            "{e}"
        );
        // A server that takes the connection and never reads nor answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let (c, t) = (Duration::from_secs(1), Duration::from_millis(800));
        let put = DirectPut::new(&endpoint, "b", "us-east-1", "k", "s", false, c, t).unwrap();
        let (big, _) = spool_file("silent.flv", 32 << 20);
        let started = std::time::Instant::now();
        let e = rt.block_on(put.put_object("k.flv", &big, 0, 32 << 20)).unwrap_err();
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3), "gave up after {:?}: {e}", started.elapsed());
        drop(silent);
    }

    #[test]
    fn only_path_style_http_endpoints_are_sent_directly() {
        let (c, t) = (Duration::from_secs(1), Duration::from_secs(1));
        assert!(DirectPut::new("https://s3.example.com", "b", "r", "k", "s", false, c, t).is_none());
        assert!(DirectPut::new("http://127.0.0.1:9000/", "b", "r", "k", "s", false, c, t).is_some());
        assert!(DirectPut::new("http://host/sub", "b", "r", "k", "s", false, c, t).is_none());
    }
}
