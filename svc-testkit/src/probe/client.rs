//! The clients: bounded TCP and UDP request/reply runs ([`run_tcp`], [`run_udp`] and their
//! multi-target and paced variants) summarised as a [`Summary`], and long-lived connections
//! ([`run_hold`]) summarised as a [`HoldSummary`].

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    any_of, check_duration, check_target, server::lock, HoldConn, HoldSummary, Latency, Reply,
    Summary, MAX_COUNT, MAX_ERRORS, MAX_HOLD_CONNS, MAX_LINE, MAX_PARALLEL,
};

/// Accumulates exchange results from several threads into a [`Summary`].
#[derive(Default)]
struct Acc {
    summary: Summary,
    peers: BTreeSet<String>,
    reply_from: BTreeSet<String>,
    /// Duration of every successful exchange, µs (8 bytes × at most [`MAX_COUNT`]).
    took_us: Vec<u64>,
}

impl Acc {
    fn ok(&mut self, reply: Reply, from: SocketAddr, took: Duration) {
        self.took_us.push(took.as_micros() as u64);
        self.summary.ok += 1;
        *self.summary.by_backend.entry(reply.id).or_default() += 1;
        self.peers.insert(reply.peer);
        self.reply_from.insert(from.to_string());
    }

    fn failed(&mut self, err: String) {
        self.summary.failed += 1;
        push_error(&mut self.summary.errors, err);
    }

    fn finish(mut self, started: Instant) -> Summary {
        self.summary.peers_seen_by_backend = self.peers.into_iter().collect();
        self.summary.reply_from = self.reply_from.into_iter().collect();
        self.summary.elapsed_ms = started.elapsed().as_millis() as u64;
        self.summary.latency_us = Latency::of(&mut self.took_us);
        self.summary
    }
}

fn push_error(errors: &mut Vec<String>, err: String) {
    if errors.len() < MAX_ERRORS && !errors.contains(&err) {
        errors.push(err);
    }
}

/// Parameters of [`run_tcp`].
#[derive(Debug, Clone)]
pub struct TcpClientConfig {
    /// Where to connect (a frontend or a pod address).
    pub target: SocketAddr,
    /// Number of connections, each carrying one exchange.
    pub count: u64,
    /// Bound on connect, and on each send and receive.
    pub timeout: Duration,
    /// Number of threads making connections concurrently.
    pub parallel: usize,
}

/// Makes `count` short connections (connect, send one line, read the reply, close), with up to
/// `parallel` in flight. Never fails as a whole: every failure is counted in the summary.
pub fn run_tcp(cfg: &TcpClientConfig) -> Result<Summary> {
    run_tcp_multi(cfg, &[cfg.target])
}

/// [`run_tcp`] spreading the connections round-robin over `targets` (by sequence number;
/// `cfg.target` is ignored): one client run against several pod addresses, which is how the
/// benchmark's no-translation floor mirrors a Service's balancing.
pub fn run_tcp_multi(cfg: &TcpClientConfig, targets: &[SocketAddr]) -> Result<Summary> {
    run_tcp_paced(cfg, targets, 0, &AtomicBool::new(false))
}

/// [`run_tcp_multi`] with connection `n` started no earlier than `n / rate_per_s` seconds
/// after the first (0: as fast as `parallel` allows), so a load runs at a set arrival rate
/// (it falls behind, never ahead, when connections take longer than `parallel / rate`).
/// Once `stop` is set, no new connection starts; those in flight finish and are counted.
pub fn run_tcp_paced(
    cfg: &TcpClientConfig,
    targets: &[SocketAddr],
    rate_per_s: u32,
    stop: &AtomicBool,
) -> Result<Summary> {
    if targets.is_empty() {
        bail!("no target");
    }
    for t in targets {
        check_target(*t)?;
    }
    check_duration("timeout", cfg.timeout)?;
    if cfg.count > MAX_COUNT {
        bail!("count {} exceeds {MAX_COUNT}", cfg.count);
    }
    let parallel = cfg.parallel.clamp(1, MAX_PARALLEL);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let acc = Mutex::new(Acc::default());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= cfg.count {
                    break;
                }
                let target = targets[(seq % targets.len() as u64) as usize];
                if rate_per_s > 0 {
                    let due = started
                        + Duration::from_micros(
                            seq.saturating_mul(1_000_000) / u64::from(rate_per_s),
                        );
                    // In short steps, so a stop is seen while waiting.
                    while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(
                            due.saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(50)),
                        );
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let began = Instant::now();
                match tcp_exchange(target, cfg.timeout, seq) {
                    Ok((reply, from)) => lock(&acc).ok(reply, from, began.elapsed()),
                    Err(e) => lock(&acc).failed(format!("{e:#}")),
                }
            });
        }
    });
    let acc = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(acc.finish(started))
}

fn tcp_exchange(target: SocketAddr, timeout: Duration, seq: u64) -> Result<(Reply, SocketAddr)> {
    let stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connect {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let from = stream.peer_addr().context("getpeername")?;
    let reply = line_exchange(&stream, seq).with_context(|| format!("exchange with {target}"))?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok((reply, from))
}

/// Sends `probe <seq>\n` and reads one reply line. Reads byte-wise through a small buffer so
/// nothing past the reply is consumed (the connection may be reused by [`run_hold`]).
fn line_exchange(mut stream: &TcpStream, seq: u64) -> Result<Reply> {
    stream
        .write_all(format!("probe {seq}\n").as_bytes())
        .context("send")?;
    let mut line = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => bail!("connection closed before a reply ({} bytes)", line.len()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("timed out waiting for a reply")
            }
            Err(e) => return Err(e).context("recv"),
        }
        if line.len() > MAX_LINE {
            bail!("reply longer than {MAX_LINE} bytes");
        }
    }
    serde_json::from_slice(&line)
        .with_context(|| format!("malformed reply {:?}", String::from_utf8_lossy(&line)))
}

/// How [`run_udp`] uses sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UdpSockets {
    /// A new socket (new source port) per exchange: every exchange is a new flow, like DNS
    /// clients that randomise ports. Exercises frontend lookup and backend choice each time.
    #[default]
    PerRequest,
    /// One socket for the whole run: one long flow, which must stay on one backend.
    One,
}

/// Parameters of [`run_udp`].
#[derive(Debug, Clone)]
pub struct UdpClientConfig {
    /// Where to send.
    pub target: SocketAddr,
    /// Number of request/reply exchanges.
    pub count: u64,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Socket per exchange or one for all.
    pub sockets: UdpSockets,
}

/// Runs `count` UDP exchanges, one at a time. Sockets are left unconnected and replies are
/// read with `recvfrom`, so a reply from the wrong source (missing reverse NAT) is still
/// received and shows up in `reply_from` instead of being silently filtered by the kernel.
pub fn run_udp(cfg: &UdpClientConfig) -> Result<Summary> {
    run_udp_multi(cfg, &[cfg.target], 1)
}

/// [`run_udp`] with `parallel` threads, each running its share of the exchanges one at a time
/// (and with its own socket under [`UdpSockets::One`], since replies are matched per socket),
/// round-robin over `targets` by sequence number (`cfg.target` is ignored).
pub fn run_udp_multi(
    cfg: &UdpClientConfig,
    targets: &[SocketAddr],
    parallel: usize,
) -> Result<Summary> {
    if targets.is_empty() {
        bail!("no target");
    }
    for t in targets {
        check_target(*t)?;
    }
    check_duration("timeout", cfg.timeout)?;
    if cfg.count > MAX_COUNT {
        bail!("count {} exceeds {MAX_COUNT}", cfg.count);
    }
    let parallel = parallel.clamp(1, MAX_PARALLEL);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let acc = Mutex::new(Acc::default());
    // Bound before any exchange, so a bind failure fails the run as a whole, as before.
    // One socket serves one family: a run's targets must share it.
    if let Some(t) = targets.iter().find(|t| t.is_ipv4() != targets[0].is_ipv4()) {
        bail!("targets {} and {t} are of different families", targets[0]);
    }
    let shared: Vec<Option<UdpSocket>> = (0..parallel)
        .map(|_| match cfg.sockets {
            UdpSockets::One => udp_socket(targets[0]).map(Some),
            UdpSockets::PerRequest => Ok(None),
        })
        .collect::<Result<_>>()?;
    std::thread::scope(|scope| {
        for sock in &shared {
            let (next, acc) = (&next, &acc);
            scope.spawn(move || udp_worker(cfg, targets, sock.as_ref(), next, acc));
        }
    });
    let acc = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(acc.finish(started))
}

/// One thread of [`run_udp_multi`]: takes sequence numbers until `count` is reached.
fn udp_worker(
    cfg: &UdpClientConfig,
    targets: &[SocketAddr],
    shared: Option<&UdpSocket>,
    next: &AtomicU64,
    acc: &Mutex<Acc>,
) {
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= cfg.count {
            break;
        }
        let owned;
        let sock = match shared {
            Some(s) => s,
            None => match udp_socket(targets[(seq % targets.len() as u64) as usize]) {
                Ok(s) => {
                    owned = s;
                    &owned
                }
                Err(e) => {
                    lock(acc).failed(format!("{e:#}"));
                    continue;
                }
            },
        };
        let target = targets[(seq % targets.len() as u64) as usize];
        let began = Instant::now();
        match udp_exchange(sock, target, cfg.timeout, seq) {
            Ok((reply, from)) => lock(acc).ok(reply, from, began.elapsed()),
            Err(e) => lock(acc).failed(format!("{e:#}")),
        }
    }
}

/// An unconnected UDP socket of `target`'s family.
fn udp_socket(target: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(any_of(target)).context("binding UDP client socket")
}

fn udp_exchange(
    sock: &UdpSocket,
    target: SocketAddr,
    timeout: Duration,
    seq: u64,
) -> Result<(Reply, SocketAddr)> {
    let req = format!("probe {seq}");
    sock.send_to(format!("{req}\n").as_bytes(), target)
        .with_context(|| format!("sendto {target}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out waiting for a reply from {target}");
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // ICMP port unreachable (the "reject" path) surfaces here on Linux.
            Err(e) => return Err(e).with_context(|| format!("recvfrom (target {target})")),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let reply: Reply = serde_json::from_str(text.trim())
            .with_context(|| format!("malformed reply {text:?} from {from}"))?;
        // A late reply to an earlier, timed-out request on a reused socket: skip it.
        if reply.req == req {
            return Ok((reply, from));
        }
    }
}

/// Parameters of [`run_hold`].
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// Where to connect.
    pub target: SocketAddr,
    /// Number of connections held open.
    pub conns: usize,
    /// How long to keep exchanging.
    pub duration: Duration,
    /// Pause between rounds of exchanges (one exchange on every live connection per round).
    pub interval: Duration,
    /// Bound on connect and on each exchange.
    pub timeout: Duration,
}

/// Opens `conns` connections, calls `on_ready` once all are attempted, then exchanges one
/// line on every live connection each `interval` until `duration` passes or `stop` is set.
/// A failed exchange marks the connection broken (and it is not used again), so `broken`
/// counts flows that a datapath change disturbed.
pub fn run_hold(
    cfg: &HoldConfig,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
) -> Result<HoldSummary> {
    check_target(cfg.target)?;
    check_duration("timeout", cfg.timeout)?;
    check_duration("duration", cfg.duration)?;
    check_duration("interval", cfg.interval)?;
    if cfg.conns == 0 || cfg.conns > MAX_HOLD_CONNS {
        bail!("conns {} is outside 1..={MAX_HOLD_CONNS}", cfg.conns);
    }
    let started = Instant::now();
    let end = started + cfg.duration;
    let mut conns: Vec<(HoldConn, Option<TcpStream>)> = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        let mut c = HoldConn::default();
        let stream = TcpStream::connect_timeout(&cfg.target, cfg.timeout)
            .and_then(|s| {
                s.set_read_timeout(Some(cfg.timeout))?;
                s.set_write_timeout(Some(cfg.timeout))?;
                s.set_nodelay(true)?;
                c.local = s.local_addr()?.to_string();
                Ok(s)
            })
            .map_err(|e| {
                c.broken = true;
                c.error = Some(format!("connect {}: {e}", cfg.target));
            })
            .ok();
        conns.push((c, stream));
    }
    on_ready();
    let mut seq = 0u64;
    let mut stopped_early = false;
    loop {
        for (c, stream) in conns.iter_mut() {
            let Some(s) = stream.as_ref() else { continue };
            seq += 1;
            match line_exchange(s, seq) {
                Ok(r) => {
                    c.ok += 1;
                    if !c.backends.contains(&r.id) {
                        c.backends.push(r.id);
                    }
                    if !c.peers.contains(&r.peer) {
                        c.peers.push(r.peer);
                    }
                }
                Err(e) => {
                    c.failed += 1;
                    c.broken = true;
                    c.error = Some(format!("{e:#}"));
                    *stream = None;
                }
            }
        }
        // Sleep until the next round in short steps so a stop request is honoured quickly.
        let next_round = Instant::now() + cfg.interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            let now = Instant::now();
            if now >= end || now >= next_round {
                break;
            }
            std::thread::sleep((next_round.min(end) - now).min(Duration::from_millis(20)));
        }
        if stopped_early || Instant::now() >= end {
            break;
        }
    }
    let mut sum = HoldSummary {
        stopped_early,
        ..HoldSummary::default()
    };
    for (c, _) in conns {
        sum.ok += c.ok;
        sum.failed += c.failed;
        sum.broken += u64::from(c.broken);
        sum.switched += u64::from(c.backends.len() > 1);
        sum.conns.push(c);
    }
    sum.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(sum)
}
