//! A TCP proxy on loopback between replicas and Redis that misbehaves on demand: it can stop
//! forwarding without closing anything (a black hole, as a partition looks from either end),
//! and it can discard bytes of Redis's replies on the connection that asked for something.
//! It counts the connections it accepted, so a test can see a connection was replaced.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How much of the replies to discard.
#[derive(Clone, Copy, Debug)]
pub enum Discard {
    /// Raw bytes, wherever they fall: usually a reply cut in two.
    Bytes(usize),
    /// Whole RESP replies: the stream stays well-formed, only shifted.
    Replies(usize),
}

#[derive(Default)]
struct Faults {
    /// While set, nothing is forwarded either way (bytes stay in the kernel's buffers).
    black_hole: AtomicBool,
    /// A marker and what to discard: the next request containing the marker has that much of
    /// the replies on its connection discarded.
    discard: Mutex<Option<(Vec<u8>, Discard)>>,
    accepted: AtomicUsize,
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let faults = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pump_pair(client, server, faults).await;
                    }
                });
            }
        });
        Proxy { addr, faults, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn black_hole(&self, on: bool) {
        self.faults.black_hole.store(on, Ordering::SeqCst);
    }

    /// Arms one discard: the next request containing `marker` loses `bytes` bytes of the
    /// replies that follow on its connection.
    pub fn discard_after(&self, marker: &[u8], discard: Discard) {
        *self.faults.discard.lock().unwrap() = Some((marker.to_vec(), discard));
    }

    pub fn armed(&self) -> bool {
        self.faults.discard.lock().unwrap().is_some()
    }

    pub fn accepted(&self) -> usize {
        self.faults.accepted.load(Ordering::SeqCst)
    }
}

async fn pump_pair(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // What of the replies is still to discard on this connection.
    let to_discard = Arc::new(Mutex::new(None::<Discard>));
    let upstream = {
        let faults = faults.clone();
        let to_discard = to_discard.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                wait_while_black_holed(&faults).await;
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                wait_while_black_holed(&faults).await;
                {
                    let mut armed = faults.discard.lock().unwrap();
                    if let Some((marker, discard)) = armed.as_ref()
                        && buf[..n]
                            .windows(marker.len())
                            .any(|w| w == marker.as_slice())
                    {
                        *to_discard.lock().unwrap() = Some(*discard);
                        *armed = None;
                    }
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            wait_while_black_holed(&faults).await;
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            wait_while_black_holed(&faults).await;
            let skip = {
                let mut pending = to_discard.lock().unwrap();
                let (skip, left) = match *pending {
                    None => (0, None),
                    Some(Discard::Bytes(bytes)) => {
                        let skip = bytes.min(n);
                        (skip, Some(Discard::Bytes(bytes - skip)))
                    }
                    Some(Discard::Replies(replies)) => {
                        let mut at = 0;
                        let mut left = replies;
                        while left > 0 && at < n {
                            at = reply_end(&buf[..n], at).unwrap_or(n);
                            left -= 1;
                        }
                        (at, Some(Discard::Replies(left)))
                    }
                };
                *pending = match left {
                    Some(Discard::Bytes(0) | Discard::Replies(0)) | None => None,
                    other => other,
                };
                skip
            };
            if client_write.write_all(&buf[skip..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

async fn wait_while_black_holed(faults: &Faults) {
    while faults.black_hole.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where the RESP reply starting at `at` ends, if it ends within `buf`.
fn reply_end(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&buf[at + 1..line_end]).ok()?;
    let next = line_end + 2;
    match buf[at] {
        b'$' => match header.parse::<i64>().ok()? {
            len if len < 0 => Some(next),
            len => Some(next + len as usize + 2).filter(|end| *end <= buf.len()),
        },
        b'*' | b'>' | b'~' => {
            let mut end = next;
            for _ in 0..header.parse::<i64>().ok()?.max(0) {
                end = reply_end(buf, end)?;
            }
            Some(end)
        }
        _ => Some(next),
    }
}
