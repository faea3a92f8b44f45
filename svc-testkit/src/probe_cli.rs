//! `svc-probe`: servers and clients for the network tests, run inside test namespaces.
//!
//! ```text
//! svc-probe serve --id NAME --tcp 80,8080 --udp 53      # prints "ready" once bound
//!                                                       # (0.0.0.0 and [::] unless --bind)
//! svc-probe tcp  --target IP:PORT[,IP:PORT…] --count N --timeout-ms T [--parallel P]
//! svc-probe udp  --target IP:PORT[,IP:PORT…] --count N --timeout-ms T [--sockets per-request|one]
//!                [--parallel P]
//! svc-probe hold --target IP:PORT --conns N --duration-s S --interval-ms I
//! svc-probe serve … --bulk 9000 --sized-udp 7053            # traffic servers (svc_testkit::traffic)
//! svc-probe bulk --target IP:PORT --dir download|upload --bytes N [--deadline-ms D]
//! svc-probe sized-udp --target IP:PORT --count N --request-len Q --reply-len R
//! svc-probe udp-connected --target IP:PORT --timeout-ms T   # refused / reply / timeout
//!                [--hop-limit H]                             # … / icmp (error queue)
//! svc-probe tcp-rst --target IP:PORT --src-port P --count N # fixed port, RST close
//! svc-probe udp-stream --target IP:PORT --interval-ms I --duration-s S  # "first ID", summary
//! ```
//! Clients print exactly one JSON summary line as their last stdout line (`hold` prints
//! "ready" first, once its connections are open) and exit 0 whenever the run itself
//! completed, however many exchanges failed: judging the numbers is the test's job. A non-zero
//! exit means a usage or setup error (message on stderr). Several `tcp`/`udp` targets are used
//! round-robin (the benchmark's floor: straight to each backend pod in turn). SIGTERM/SIGINT stop `serve` and
//! `hold` cleanly (`hold` still prints its summary). Targets are `IP:PORT` or `[IPv6]:PORT`;
//! servers listen on both families. See `svc_testkit::probe` for the semantics.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::probe::{self, UdpSockets};
use crate::traffic::{self, BulkDir};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "svc-probe",
    about = "svc-lb test traffic: identity servers and clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every TCP line / UDP datagram with {"id","peer","local","req"} JSON.
    Serve {
        /// Backend name put in every reply.
        #[arg(long)]
        id: String,
        /// TCP ports to listen on.
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<u16>,
        /// UDP ports to answer on.
        #[arg(long, value_delimiter = ',')]
        udp: Vec<u16>,
        /// Address to bind: 0.0.0.0 or :: (the default) listens on both families, one socket
        /// each; another address on that address alone.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// TCP ports for bulk transfers (`GET n` / `PUT n`, svc_testkit::traffic).
        #[arg(long, value_delimiter = ',')]
        bulk: Vec<u16>,
        /// UDP ports answering sized requests (svc_testkit::traffic).
        #[arg(long, value_delimiter = ',')]
        sized_udp: Vec<u16>,
    },
    /// One bulk transfer verified by SHA-256 on both sides.
    Bulk {
        #[arg(long)]
        target: String,
        #[arg(long, value_enum)]
        dir: BulkDir,
        #[arg(long, default_value_t = 8 << 20)]
        bytes: u64,
        /// Bound on connect and on any single read or write.
        #[arg(long, default_value_t = 5000)]
        stall_ms: u64,
        /// Bound on the whole transfer.
        #[arg(long, default_value_t = 60_000)]
        deadline_ms: u64,
        /// Zeros and no SHA-256 on either side: a throughput figure, not a correctness check.
        #[arg(long)]
        raw: bool,
    },
    /// UDP exchanges with requests and replies of chosen sizes, checked byte for byte.
    SizedUdp {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        request_len: usize,
        #[arg(long, default_value_t = 1400)]
        reply_len: usize,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// A connected UDP socket: does an ICMP error come back as ECONNREFUSED?
    UdpConnected {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Send again this often until an outcome.
        #[arg(long, default_value_t = 200)]
        resend_ms: u64,
        /// Send with this TTL / hop limit and report any ICMP error from the error queue
        /// (outcome `icmp`, details in `icmp`).
        #[arg(long)]
        hop_limit: Option<u8>,
    },
    /// Connections from one fixed source port, each closed with RST (SO_LINGER 0).
    TcpRst {
        #[arg(long)]
        target: String,
        #[arg(long)]
        src_port: u16,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// One UDP socket sending every interval, recording every reply's time, backend, source.
    UdpStream {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long)]
        duration_s: u64,
        /// Connect the socket (send/recv); connect again after an error.
        #[arg(long)]
        connect: bool,
    },
    /// Short TCP connections, one exchange each.
    Tcp {
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// New connections per second (0: as fast as `parallel` allows).
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
    /// UDP request/reply exchanges.
    Udp {
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, value_enum, default_value_t = UdpSockets::PerRequest)]
        sockets: UdpSockets,
        /// Threads, each doing its share of the exchanges one at a time.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
    /// Long-lived TCP connections, one exchange per connection every interval.
    Hold {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long)]
        duration_s: u64,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

/// Set by SIGTERM/SIGINT; polled by the serve and hold loops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only performs an atomic store.
        let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error()).context("installing signal handler");
        }
    }
    Ok(())
}

fn print_line(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Parses every `--target` (at least one; clap requires the flag).
fn parse_targets(targets: &[String]) -> Result<Vec<std::net::SocketAddr>> {
    let parsed: Vec<_> = targets
        .iter()
        .map(|t| probe::parse_target(t))
        .collect::<Result<_>>()?;
    anyhow::ensure!(!parsed.is_empty(), "--target is required");
    Ok(parsed)
}

/// The `svc-probe` command (its binary is the `tests` package's, so that integration tests
/// get its path from Cargo, `CARGO_BIN_EXE_svc-probe`, always freshly built).
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    install_stop_handler()?;
    let ms = Duration::from_millis;
    match cli.cmd {
        Cmd::Serve {
            id,
            tcp,
            udp,
            bind,
            bulk,
            sized_udp,
        } => {
            let bulk = (!bulk.is_empty())
                .then(|| traffic::BulkServer::start(&id, &bulk))
                .transpose()?;
            let sized = (!sized_udp.is_empty())
                .then(|| traffic::SizedUdpServer::start(&id, &sized_udp))
                .transpose()?;
            let server =
                (!tcp.is_empty() || !udp.is_empty() || (bulk.is_none() && sized.is_none()))
                    .then(|| probe::Server::start(probe::ServeConfig { id, tcp, udp, bind }))
                    .transpose()?;
            print_line("ready")?;
            while !STOP.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(server);
            drop(bulk);
            drop(sized);
        }
        Cmd::Bulk {
            target,
            dir,
            bytes,
            stall_ms,
            deadline_ms,
            raw,
        } => {
            let r = traffic::run_bulk(&traffic::BulkConfig {
                target: probe::parse_target(&target)?,
                dir,
                bytes,
                stall: ms(stall_ms),
                deadline: ms(deadline_ms),
                raw,
            })?;
            print_line(&serde_json::to_string(&r)?)?;
        }
        Cmd::SizedUdp {
            target,
            count,
            request_len,
            reply_len,
            timeout_ms,
        } => {
            let r = traffic::run_sized_udp(&traffic::SizedUdpConfig {
                target: probe::parse_target(&target)?,
                count,
                request_len,
                reply_len,
                timeout: ms(timeout_ms),
            })?;
            print_line(&serde_json::to_string(&r)?)?;
        }
        Cmd::UdpConnected {
            target,
            timeout_ms,
            resend_ms,
            hop_limit,
        } => {
            let r = traffic::run_udp_connected_hops(
                probe::parse_target(&target)?,
                ms(timeout_ms),
                ms(resend_ms),
                hop_limit,
            )?;
            print_line(&serde_json::to_string(&r)?)?;
        }
        Cmd::TcpRst {
            target,
            src_port,
            count,
            interval_ms,
            timeout_ms,
        } => {
            let r = traffic::run_tcp_rst(
                probe::parse_target(&target)?,
                src_port,
                count,
                ms(interval_ms),
                ms(timeout_ms),
            )?;
            print_line(&serde_json::to_string(&r)?)?;
        }
        Cmd::UdpStream {
            target,
            interval_ms,
            duration_s,
            connect,
        } => {
            let mut ready_err = None;
            let r = traffic::run_udp_stream(
                probe::parse_target(&target)?,
                ms(interval_ms),
                Duration::from_secs(duration_s),
                connect,
                &STOP,
                |id| ready_err = print_line(&format!("first {id}")).err(),
            )?;
            if let Some(e) = ready_err {
                return Err(e);
            }
            print_line(&serde_json::to_string(&r)?)?;
        }
        Cmd::Tcp {
            target,
            count,
            timeout_ms,
            parallel,
            rate,
        } => {
            let targets = parse_targets(&target)?;
            let s = probe::run_tcp_paced(
                &probe::TcpClientConfig {
                    target: targets[0],
                    count,
                    timeout: ms(timeout_ms),
                    parallel,
                },
                &targets,
                rate,
                &STOP,
            )?;
            print_line(&serde_json::to_string(&s)?)?;
        }
        Cmd::Udp {
            target,
            count,
            timeout_ms,
            sockets,
            parallel,
        } => {
            let targets = parse_targets(&target)?;
            let s = probe::run_udp_multi(
                &probe::UdpClientConfig {
                    target: targets[0],
                    count,
                    timeout: ms(timeout_ms),
                    sockets,
                },
                &targets,
                parallel,
            )?;
            print_line(&serde_json::to_string(&s)?)?;
        }
        Cmd::Hold {
            target,
            conns,
            duration_s,
            interval_ms,
            timeout_ms,
        } => {
            let mut ready_err = None;
            let s = probe::run_hold(
                &probe::HoldConfig {
                    target: probe::parse_target(&target)?,
                    conns,
                    duration: Duration::from_secs(duration_s),
                    interval: ms(interval_ms),
                    timeout: ms(timeout_ms),
                },
                &STOP,
                || ready_err = print_line("ready").err(),
            )?;
            if let Some(e) = ready_err {
                return Err(e);
            }
            print_line(&serde_json::to_string(&s)?)?;
        }
    }
    Ok(())
}
