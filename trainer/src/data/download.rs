//! Downloads a file once into a cache: resumable, verified, and never leaving
//! a bad file where a good one is expected.
//!
//! The bytes go to `DEST.partial`; an interrupted transfer resumes from it
//! with an HTTP `Range` request. Only a complete file of the right size and
//! checksum is renamed to `DEST`, so `DEST` existing means it is good.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::DataError;

/// What a downloaded file must be; `None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: Option<u64>,
    /// MD5 as hex (case-insensitive).
    pub md5: Option<String>,
    /// SHA-256 as hex (case-insensitive).
    pub sha256: Option<String>,
}

/// A well-known archive: where it is, what it is called in the cache, and
/// what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteArchive {
    pub url: &'static str,
    /// The name it gets in the cache folder.
    pub file_name: &'static str,
    pub expected: Expected,
}

/// The official CIFAR-10 binary release (size and md5 as the data set's page lists them).
pub static CIFAR10: LazyLock<RemoteArchive> = LazyLock::new(|| RemoteArchive {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    file_name: "cifar-10-binary.tar.gz",
    expected: Expected {
        size: Some(170_052_171),
        md5: Some("c32a1d4ab5d03f1284b67883e8d87530".to_owned()),
        sha256: None,
    },
});

/// The official CIFAR-100 binary release. Size and md5 as recorded by the
/// public git-annex mirror datasets-mila/datasets--cifar100 (its `md5sums`
/// file and annex key `MD5E-s168513733--03b5dce0...`).
pub static CIFAR100: LazyLock<RemoteArchive> = LazyLock::new(|| RemoteArchive {
    url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    file_name: "cifar-100-binary.tar.gz",
    expected: Expected {
        size: Some(168_513_733),
        md5: Some("03b5dce01913d631647c71ecec9e9cb8".to_owned()),
        sha256: None,
    },
});

/// The user's cache folder for this project: `$XDG_CACHE_HOME/vit-rs` or
/// `~/.cache/vit-rs` on Linux (the platform's cache folder elsewhere), or
/// the temporary folder when there is no home directory.
pub fn cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("vit-rs")
}

/// Gets `url` into `dest` unless a good copy is already there, and returns
/// `dest`. `progress(done, total)` is called as bytes arrive (`done` counts
/// resumed bytes too; `total` is known from the server or `expected.size`).
pub fn fetch(
    url: &str,
    dest: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, DataError> {
    if dest.is_file() {
        if verify(dest, expected)
            .map_err(|e| DataError::io("read", dest, e))?
            .is_none()
        {
            return Ok(dest.to_path_buf());
        }
        // A wrong file at `dest` is stale or damaged: replace it.
        std::fs::remove_file(dest).map_err(|e| DataError::io("remove the damaged", dest, e))?;
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| DataError::io("create the folder", parent, e))?;
    }
    let partial = partial_path(dest);
    download_to_partial(url, dest, &partial, expected, progress)?;

    let io_partial = |e| DataError::io("read", &partial, e);
    let actual_size = std::fs::metadata(&partial).map_err(io_partial)?.len();
    if let Some(size) = expected.size
        && actual_size < size
    {
        // The server ended the body early without an error: keep the bytes
        // so the next call resumes.
        return Err(DataError::Download {
            url: url.to_owned(),
            reason: format!("the transfer ended after {actual_size} of {size} bytes"),
            hint: "Run again to resume.".to_owned(),
        });
    }
    if let Some(mismatch) = verify(&partial, expected).map_err(io_partial)? {
        // Bad bytes cannot be resumed from: start afresh next time.
        let _ = std::fs::remove_file(&partial);
        return Err(DataError::Mismatch {
            url: url.to_owned(),
            what: mismatch.what,
            expected: mismatch.expected,
            actual: mismatch.actual,
        });
    }
    // Same folder, so the rename is atomic: `dest` is whole or absent.
    std::fs::rename(&partial, dest).map_err(|e| DataError::io("rename into place", &partial, e))?;
    Ok(dest.to_path_buf())
}

/// `DEST.partial`, beside `dest` so the final rename stays on one file system.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Statuses are handled below (206 vs 200 vs 416).
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer fails rather than hanging; large files still
        // take as long as they need.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// What to tell a user whose download failed: how to put the file in place by hand.
fn manual_hint(url: &str, dest: &Path, expected: &Expected) -> String {
    let mut facts = Vec::new();
    if let Some(size) = expected.size {
        facts.push(format!("{size} bytes"));
    }
    if let Some(md5) = &expected.md5 {
        facts.push(format!("md5 {md5}"));
    }
    if let Some(sha) = &expected.sha256 {
        facts.push(format!("sha256 {sha}"));
    }
    let facts = if facts.is_empty() {
        String::new()
    } else {
        format!(" ({})", facts.join(", "))
    };
    format!(
        "If this machine is offline, download {url}{facts} elsewhere and put it at {}; it is then used without downloading.",
        dest.display()
    )
}

/// Brings `partial` up to the end of the file, resuming when it can.
fn download_to_partial(
    url: &str,
    dest: &Path,
    partial: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), DataError> {
    let network = |reason: String| DataError::Download {
        url: url.to_owned(),
        reason,
        hint: manual_hint(url, dest, expected),
    };
    let agent = agent();
    // Two rounds at most: a resume the server refuses (416, or a different
    // range) starts over once.
    for _ in 0..2 {
        let mut have = match std::fs::metadata(partial) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(DataError::io("read", partial, e)),
        };
        if let Some(size) = expected.size {
            if have == size {
                return Ok(()); // complete already; the caller verifies it
            }
            if have > size {
                have = 0; // cannot be a prefix of the right file
            }
        }
        let mut request = agent.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request.call().map_err(|e| network(e.to_string()))?;
        let status = response.status().as_u16();
        let append = match status {
            206 => {
                let start = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(have) {
                    // Not the bytes asked for: drop the partial, start over.
                    std::fs::remove_file(partial)
                        .map_err(|e| DataError::io("remove", partial, e))?;
                    continue;
                }
                true
            }
            // The server ignored the Range header and sends everything.
            200 => false,
            416 if have > 0 => {
                // The server does not accept our offset: start over.
                std::fs::remove_file(partial).map_err(|e| DataError::io("remove", partial, e))?;
                continue;
            }
            other => return Err(network(format!("the server answered HTTP {other}"))),
        };
        let done = if append { have } else { 0 };
        let total = response
            .body()
            .content_length()
            .map(|len| len + done)
            .or(expected.size);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(|e| DataError::io("create", partial, e))?;
        // One byte beyond the expected size is enough to detect an oversized
        // file; a misbehaving server cannot fill the disk.
        let limit = expected
            .size
            .map_or(u64::MAX, |size| size.saturating_sub(done) + 1);
        let mut body = response.into_body().into_reader().take(limit);
        copy_with_progress(&mut body, &mut file, done, total, progress)
            .map_err(|(written, e)| match e {
                CopyError::Read(e) => network(format!(
                    "the transfer broke off after {written} bytes ({e}); run again to resume from there"
                )),
                CopyError::Write(e) => DataError::io("write", partial, e),
            })?;
        file.sync_all()
            .map_err(|e| DataError::io("write", partial, e))?;
        return Ok(());
    }
    Err(network(
        "the server refused to resume and then to start over".to_owned(),
    ))
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies the body, reporting progress; on failure returns the byte count
/// reached (resumed bytes included) with the error.
fn copy_with_progress(
    body: &mut dyn Read,
    file: &mut File,
    mut done: u64,
    total: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), (u64, CopyError)> {
    let mut buf = vec![0u8; 1 << 16];
    progress(done, total);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((done, CopyError::Read(e))),
        };
        file.write_all(&buf[..n])
            .map_err(|e| (done, CopyError::Write(e)))?;
        done += n as u64;
        progress(done, total);
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// One failed check.
struct Mismatch {
    what: &'static str,
    expected: String,
    actual: String,
}

/// Checks size, then hashes in one pass; `Ok(None)` when all match.
fn verify(path: &Path, expected: &Expected) -> std::io::Result<Option<Mismatch>> {
    let size = std::fs::metadata(path)?.len();
    if let Some(want) = expected.size
        && want != size
    {
        return Ok(Some(Mismatch {
            what: "size",
            expected: format!("{want} bytes"),
            actual: format!("{size} bytes"),
        }));
    }
    if expected.md5.is_none() && expected.sha256.is_none() {
        return Ok(None);
    }
    let mut md5 = expected.md5.as_ref().map(|_| Md5::new());
    let mut sha = expected.sha256.as_ref().map(|_| Sha256::new());
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(h) = md5.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(h) = sha.as_mut() {
            h.update(&buf[..n]);
        }
    }
    let checks = [
        ("md5", &expected.md5, md5.map(|h| hex(&h.finalize()))),
        ("sha256", &expected.sha256, sha.map(|h| hex(&h.finalize()))),
    ];
    for (what, want, got) in checks {
        if let (Some(want), Some(got)) = (want, got)
            && !want.trim().eq_ignore_ascii_case(&got)
        {
            return Ok(Some(Mismatch {
                what,
                expected: want.trim().to_ascii_lowercase(),
                actual: got,
            }));
        }
    }
    Ok(None)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Instant;

    /// How the test server answers one request, given the request head.
    type Responder = Box<dyn Fn(&str, &mut TcpStream) + Send>;

    /// A one-thread HTTP server on 127.0.0.1 answering request `i` with
    /// `responders[i]`; it stops when told or after 20 s, whichever is first.
    struct Server {
        url: String,
        requests: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(responders: Vec<Responder>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let url = format!("http://{}/file.bin", listener.local_addr().expect("addr"));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (log, flag) = (requests.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let mut stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let head = read_head(&stream);
                    let index = {
                        let mut log = log.lock().expect("lock");
                        log.push(head.clone());
                        log.len() - 1
                    };
                    match responders.get(index) {
                        Some(respond) => respond(&head, &mut stream),
                        None => {
                            let _ = stream.write_all(
                                b"HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                        }
                    }
                }
            });
            Server {
                url,
                requests,
                stop,
                thread: Some(thread),
            }
        }

        /// Stops the server and returns the request heads it saw.
        fn finish(mut self) -> Vec<String> {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                t.join().expect("server thread");
            }
            self.requests.lock().expect("lock").clone()
        }
    }

    fn read_head(stream: &TcpStream) -> String {
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        head
    }

    fn range_start(head: &str) -> Option<u64> {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("range") {
                return None;
            }
            value
                .trim()
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
    }

    /// A full 200 response of `body` (ignoring any Range header).
    fn full(body: Vec<u8>) -> Responder {
        Box::new(move |_, s| {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        })
    }

    /// Announces all of `body` but sends only the first `cut` bytes, then closes.
    fn broken(body: Vec<u8>, cut: usize) -> Responder {
        Box::new(move |_, s| {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..cut]);
            let _ = s.flush();
        })
    }

    /// Honours `Range: bytes=N-` with a 206.
    fn ranged(body: Vec<u8>) -> Responder {
        Box::new(move |head, s| {
            let start = range_start(head).unwrap_or(0) as usize;
            let len = body.len();
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - start
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[start..]);
        })
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn expected_for(bytes: &[u8]) -> Expected {
        Expected {
            size: Some(bytes.len() as u64),
            md5: Some(hex(&Md5::digest(bytes))),
            sha256: Some(hex(&Sha256::digest(bytes)).to_ascii_uppercase()),
        }
    }

    #[test]
    fn hashes_match_known_vectors() {
        assert_eq!(
            hex(&Md5::digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }

    #[test]
    fn downloads_and_verifies_a_good_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("cache/sub/file.bin");
        let server = Server::start(vec![full(body())]);
        let mut calls = Vec::new();
        let got = fetch(&server.url, &dest, &expected_for(&body()), &mut |d, t| {
            calls.push((d, t))
        })
        .expect("fetch");
        assert_eq!(server.finish().len(), 1);
        assert_eq!(got, dest);
        assert_eq!(std::fs::read(&dest).expect("read"), body());
        assert!(!partial_path(&dest).exists());
        assert_eq!(calls.first(), Some(&(0, Some(200_000))));
        assert_eq!(calls.last(), Some(&(200_000, Some(200_000))));
    }

    #[test]
    fn wrong_checksum_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        let server = Server::start(vec![full(body())]);
        let expected = Expected {
            md5: Some("0123456789abcdef0123456789abcdef".to_owned()),
            ..expected_for(&body())
        };
        let err = fetch(&server.url, &dest, &expected, &mut |_, _| {}).expect_err("mismatch");
        server.finish();
        let text = err.to_string();
        assert!(
            matches!(err, DataError::Mismatch { what: "md5", .. }),
            "{text}"
        );
        assert!(text.contains("0123456789abcdef0123456789abcdef"), "{text}");
        assert!(text.contains(&hex(&Md5::digest(body()))), "{text}");
        assert!(!dest.exists());
        assert!(!partial_path(&dest).exists());
    }

    #[test]
    fn interrupted_transfer_resumes_with_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        let expected = expected_for(&body());

        let server = Server::start(vec![broken(body(), 70_000)]);
        let err = fetch(&server.url, &dest, &expected, &mut |_, _| {}).expect_err("broken");
        server.finish();
        assert!(matches!(err, DataError::Download { .. }), "{err}");
        assert!(!dest.exists());
        let kept = std::fs::metadata(partial_path(&dest))
            .expect("partial")
            .len();
        assert!(kept > 0 && kept <= 70_000, "kept {kept}");

        let server = Server::start(vec![ranged(body())]);
        let mut first = None;
        fetch(&server.url, &dest, &expected, &mut |d, _| {
            first.get_or_insert(d);
        })
        .expect("resume");
        let requests = server.finish();
        assert_eq!(requests.len(), 1);
        assert_eq!(range_start(&requests[0]), Some(kept), "{}", requests[0]);
        assert_eq!(first, Some(kept));
        assert_eq!(std::fs::read(&dest).expect("read"), body());
        assert!(!partial_path(&dest).exists());
    }

    #[test]
    fn server_ignoring_range_restarts_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        // A partial whose bytes are wrong: appending to it would fail the md5.
        std::fs::write(partial_path(&dest), vec![0xAA; 5_000]).expect("partial");
        let server = Server::start(vec![full(body())]);
        fetch(&server.url, &dest, &expected_for(&body()), &mut |_, _| {}).expect("fetch");
        let requests = server.finish();
        assert_eq!(range_start(&requests[0]), Some(5_000));
        assert_eq!(std::fs::read(&dest).expect("read"), body());
    }

    #[test]
    fn cached_file_makes_no_request_and_bad_cache_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        std::fs::write(&dest, body()).expect("write");
        let server = Server::start(vec![]);
        fetch(&server.url, &dest, &expected_for(&body()), &mut |_, _| {}).expect("cached");
        // Give a stray request time to arrive before checking there was none.
        std::thread::sleep(Duration::from_millis(50));
        assert!(server.finish().is_empty());

        std::fs::write(&dest, b"stale").expect("write");
        let server = Server::start(vec![full(body())]);
        fetch(&server.url, &dest, &expected_for(&body()), &mut |_, _| {}).expect("refetch");
        assert_eq!(server.finish().len(), 1);
        assert_eq!(std::fs::read(&dest).expect("read"), body());
    }

    #[test]
    fn offline_error_says_what_to_download_and_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("cifar-10-binary.tar.gz");
        // A port with nothing listening: the connection is refused at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
        let err = fetch(&url, &dest, &CIFAR10.expected, &mut |_, _| {}).expect_err("offline");
        let text = err.to_string();
        assert!(text.contains(&url), "{text}");
        assert!(text.contains(&dest.display().to_string()), "{text}");
        assert!(text.contains("c32a1d4ab5d03f1284b67883e8d87530"), "{text}");
        assert!(!dest.exists());
    }

    #[test]
    fn http_errors_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        let not_found: Responder = Box::new(|_, s| {
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        let server = Server::start(vec![not_found]);
        let err = fetch(&server.url, &dest, &Expected::default(), &mut |_, _| {}).expect_err("404");
        server.finish();
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn oversized_download_is_cut_and_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.bin");
        let server = Server::start(vec![full(body())]);
        let expected = Expected {
            size: Some(1_000),
            ..Expected::default()
        };
        let err = fetch(&server.url, &dest, &expected, &mut |_, _| {}).expect_err("too big");
        server.finish();
        assert!(
            matches!(err, DataError::Mismatch { what: "size", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1001 bytes"), "{err}");
        assert!(!dest.exists() && !partial_path(&dest).exists());
    }

    #[test]
    fn cache_dir_ends_in_project_name() {
        assert!(cache_dir().ends_with("vit-rs"));
        assert!(CIFAR10.url.ends_with(CIFAR10.file_name));
        assert!(CIFAR100.url.ends_with(CIFAR100.file_name));
    }
}
