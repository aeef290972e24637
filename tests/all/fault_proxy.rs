//! A small HTTP/1.1 proxy in front of a plain-HTTP registry that injects faults: answers 503,
//! answers 429 with `Retry-After`, drops a connection in the middle of a blob upload. Test
//! code only; it forwards one request per client connection (`Connection: close` both ways),
//! which keeps it simple and is a pattern clients must handle anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which faults to inject, consumed in order.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N requests get `503 Service Unavailable`.
    pub unavailable: u32,
    /// Then the next N get `429 Too Many Requests` with `Retry-After: 1`.
    pub too_many: u32,
    /// The next N blob uploads (PUT with a body over 1 MiB) lose their connection half-way.
    pub drop_uploads: u32,
    /// Every request gets 503, forever (a registry that stays down).
    pub always_unavailable: bool,
}

/// What the proxy saw: one line per request (`PUT /v2/... -> 503`).
pub type Log = Arc<Mutex<Vec<String>>>;

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Requests seen.
    pub log: Log,
    stop: Arc<AtomicBool>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`, plain HTTP) with `faults`.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let faults = Arc::new(Mutex::new(faults));
        let (stop2, log2, upstream) = (stop.clone(), log.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (faults, log, upstream) = (faults.clone(), log2.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &upstream, &faults, &log);
                });
            }
        });
        FaultProxy { addr, log, stop }
    }
}

fn handle(client: TcpStream, upstream: &str, faults: &Mutex<Faults>, log: &Log) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let request_line = head[0].trim().to_string();
    let method = request_line.split(' ').next().unwrap_or("").to_string();
    let length: u64 = head
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut client = client;
    let fault = {
        let mut f = faults.lock().unwrap();
        if f.always_unavailable {
            Some(503)
        } else if f.unavailable > 0 {
            f.unavailable -= 1;
            Some(503)
        } else if f.too_many > 0 {
            f.too_many -= 1;
            Some(429)
        } else if f.drop_uploads > 0 && method == "PUT" && length > 1 << 20 {
            f.drop_uploads -= 1;
            Some(0)
        } else {
            None
        }
    };
    match fault {
        Some(0) => {
            // Take half the blob, then cut the connection.
            std::io::copy(&mut (&mut reader).take(length / 2), &mut std::io::sink())?;
            log.lock().unwrap().push(format!("{request_line} -> dropped after {} bytes", length / 2));
            client.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        Some(code) => {
            std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
            let (reason, extra) =
                if code == 429 { ("Too Many Requests", "Retry-After: 1\r\n") } else { ("Service Unavailable", "") };
            write!(client, "HTTP/1.1 {code} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
            log.lock().unwrap().push(format!("{request_line} -> {code}"));
            return Ok(());
        }
        None => {}
    }
    let mut up = TcpStream::connect(upstream)?;
    for h in &head[..head.len() - 1] {
        if h.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        up.write_all(h.as_bytes())?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    std::io::copy(&mut (&mut reader).take(length), &mut up)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let status = String::from_utf8_lossy(&response[..response.len().min(12)]).to_string();
    log.lock().unwrap().push(format!("{request_line} -> {}", status.trim()));
    client.write_all(&response)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// A TCP proxy (bytes both ways, TLS passes through untouched) that can cut every connection
/// at once and refuse new ones for a while: an API server whose watches drop (a restart, a
/// load balancer's idle timeout). Listens on `bind_ip` (the upstream's IP, so its certificate
/// still matches).
pub struct TcpFaultProxy {
    /// `IP:PORT`.
    pub addr: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    refuse: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Connections cut so far.
    pub cut_count: Arc<std::sync::atomic::AtomicUsize>,
}

impl TcpFaultProxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub fn start(bind_ip: &str, upstream: &str) -> TcpFaultProxy {
        let listener = TcpListener::bind(format!("{bind_ip}:0")).expect("bind the TCP fault proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (refuse, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (conns2, refuse2, stop2, upstream) = (conns.clone(), refuse.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if refuse2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let mut list = conns2.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
                list.push(client);
                list.push(server);
            }
        });
        TcpFaultProxy { addr, conns, refuse, stop, cut_count: Arc::default() }
    }

    /// Cuts every open connection and refuses new ones for `outage`.
    pub fn cut(&self, outage: Duration) {
        self.refuse.store(true, Ordering::SeqCst);
        let list = std::mem::take(&mut *self.conns.lock().unwrap());
        self.cut_count.fetch_add(list.len() / 2, Ordering::SeqCst);
        for c in list {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(outage);
        self.refuse.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpFaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
