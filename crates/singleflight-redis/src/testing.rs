//! A real `redis-server` for tests (feature `test-util`): on a free
//! loopback port, in a temporary directory, stopped when dropped. A server
//! that cannot start fails the test: it never skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, started with `redis-server` from
/// the `PATH` (Debian's package), saving nothing to disk.
///
/// # Examples
///
/// ```no_run
/// let server = singleflight_redis::testing::RedisServer::start();
/// assert_eq!(server.command(&["PING"]).as_deref(), Some("+PONG"));
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// With TLS: its TLS port, and the server's arguments for it.
    tls: Option<(u16, Vec<String>)>,
    /// Its loopback port.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// A loopback port nothing listens on now.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

impl RedisServer {
    /// Starts one and waits (at most 10 s) until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be run or does not answer: install it
    /// (`apt-get install redis-server`).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let mut server = Self {
            child: None,
            tls: None,
            port: free_port(),
            dir,
        };
        server.restart();
        server
    }

    /// Starts one that also takes TLS connections, with `cert` and `key`
    /// (PEM files) on a port of its own, without client certificates.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let tls_port = free_port();
        let args = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = Self {
            child: None,
            tls: Some((tls_port, args)),
            port: free_port(),
            dir,
        };
        server.restart();
        server
    }

    /// `rediss://127.0.0.1:{tls port}`, when it takes TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://127.0.0.1:{port}"))
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (after `stop`).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls.iter().flat_map(|(_, args)| args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("redis-server could not start ({error}); install it: apt-get install redis-server (scripts/test does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (the data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one command (arguments without spaces or newlines) and returns
    /// the first line of the answer, or `None` when nothing answers.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(1) => {
                    answer.push(byte[0]);
                    if answer.ends_with(b"\r\n") {
                        break;
                    }
                }
                _ => return None,
            }
        }
        let line = String::from_utf8_lossy(&answer).trim_end().to_string();
        // A bulk string: its first line is the length; read the value too.
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<i64>().ok()) {
            if len < 0 {
                return Some("(nil)".into());
            }
            let mut value = vec![0u8; len as usize + 2];
            stream.read_exact(&mut value).ok()?;
            value.truncate(len as usize);
            return Some(String::from_utf8_lossy(&value).into_owned());
        }
        Some(line)
    }

    /// Waits (at most 10 s) until `check` holds for the server's answer to `args`.
    ///
    /// # Panics
    ///
    /// When it never does.
    pub fn wait_for(&self, args: &[&str], check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(answer) = self.command(args)
                && check(&answer)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} never answered as expected"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many clients are blocked in a command (a waiter's `XREAD`).
    ///
    /// # Panics
    ///
    /// When the server does not answer.
    pub fn blocked_clients(&self) -> usize {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connected");
        stream
            .write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
            .expect("sent");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        let mut text = String::new();
        let mut buffer = [0u8; 4096];
        while !text.contains("blocked_clients:") || !text.ends_with("\r\n") {
            let n = stream.read(&mut buffer).expect("an answer");
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        text.lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The Redis keys (lease, generation, results) of user key `key`
    /// under `prefix`.
    pub fn keys_of(prefix: &str, key: &[u8]) -> (String, String, String) {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        (
            format!("{prefix}:{{{hex}}}:lease"),
            format!("{prefix}:{{{hex}}}:gen"),
            format!("{prefix}:{{{hex}}}:results"),
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
