//! TCP from one fixed source port, each connection closed with RST so the next one reuses the
//! 4-tuple at once ([`run_tcp_rst`]).

use std::{
    io::{self, Write},
    mem::size_of,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::{check_duration, read_line};
use crate::probe::{any_of, check_target, setsockopt_int, sockaddr_raw, Reply};

/// One connection of [`run_tcp_rst`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstAttempt {
    pub ok: bool,
    pub backend: String,
    pub local: String,
    pub elapsed_ms: u64,
    pub error: Option<String>,
}

/// Result of [`run_tcp_rst`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstSummary {
    pub target: String,
    pub src_port: u16,
    pub attempts: Vec<RstAttempt>,
}

/// A TCP socket of `target`'s family bound to source port `port` with `SO_REUSEADDR`.
fn tcp_socket_bound(target: SocketAddr, port: u16) -> Result<TcpStreamBuilder> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).context("SO_REUSEADDR")?;
    let mut local = any_of(target);
    local.set_port(port);
    let (sa, len) = sockaddr_raw(local);
    // SAFETY: `sa` is a valid sockaddr of length `len`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind to port {port}"));
    }
    Ok(TcpStreamBuilder(fd))
}

struct TcpStreamBuilder(OwnedFd);

impl TcpStreamBuilder {
    /// Non-blocking connect bounded by `timeout`, then back to blocking.
    fn connect(self, target: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let fd = self.0.as_raw_fd();
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let (sa, len) = sockaddr_raw(target);
        // SAFETY: `sa` is a valid sockaddr of length `len`.
        let rc = unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e).with_context(|| format!("connect {target}"));
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
            ensure!(n > 0, "connect {target}: timed out after {timeout:?}");
            let mut err: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads SO_ERROR into a c_int.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                );
            }
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err))
                    .with_context(|| format!("connect {target}"));
            }
        }
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        Ok(TcpStream::from(self.0))
    }
}

/// Closes with RST: `SO_LINGER {on, 0}` then close.
fn close_with_rst(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd; the option value is a linger struct of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Sends `probe <seq>\n` and reads the JSON [`Reply`] line.
pub fn line_exchange(s: &TcpStream, seq: u64) -> Result<Reply> {
    let mut w = s;
    w.write_all(format!("probe {seq}\n").as_bytes())
        .context("send")?;
    let line = read_line(s)?;
    serde_json::from_str(&line).with_context(|| format!("malformed reply {line:?}"))
}

/// `count` connections one after another, each bound to `src_port`, one exchange, closed with
/// RST; `interval` apart.
pub fn run_tcp_rst(
    target: SocketAddr,
    src_port: u16,
    count: u64,
    interval: Duration,
    timeout: Duration,
) -> Result<RstSummary> {
    check_target(target)?;
    check_duration("timeout", timeout)?;
    ensure!(count <= 10_000, "count {count} exceeds 10000");
    ensure!(src_port != 0, "a fixed source port is required");
    let mut sum = RstSummary {
        target: target.to_string(),
        src_port,
        attempts: Vec::new(),
    };
    for seq in 0..count {
        if seq > 0 {
            std::thread::sleep(interval);
        }
        let began = Instant::now();
        let mut a = RstAttempt::default();
        let res = tcp_socket_bound(target, src_port)
            .and_then(|b| b.connect(target, timeout))
            .and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                a.local = s.local_addr().map(|l| l.to_string()).unwrap_or_default();
                let reply = line_exchange(&s, seq);
                close_with_rst(s);
                reply
            });
        match res {
            Ok(reply) => {
                a.ok = true;
                a.backend = reply.id;
            }
            Err(e) => a.error = Some(format!("{e:#}")),
        }
        a.elapsed_ms = began.elapsed().as_millis() as u64;
        sum.attempts.push(a);
    }
    Ok(sum)
}
