//! Unit tests of svc-probe's server and clients, on loopback and in namespaces.

use std::{
    net::{Ipv4Addr, TcpListener, UdpSocket},
    sync::atomic::AtomicBool,
};

use super::*;

fn loopback_server(id: &str) -> (Server, u16, u16) {
    // Port 0 is not usable through ServeConfig (tests of the binary pass real ports), so
    // probe for a free pair by binding and releasing.
    let tcp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = Server::start(ServeConfig {
        id: id.into(),
        tcp: vec![tcp],
        udp: vec![udp],
        bind: Ipv4Addr::LOCALHOST.into(),
    })
    .expect("start server");
    (srv, tcp, udp)
}

#[test]
fn tcp_udp_and_hold_over_loopback() {
    let (srv, tcp, udp) = loopback_server("a");
    let t = run_tcp(&TcpClientConfig {
        target: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, tcp).into(),
        count: 20,
        timeout: Duration::from_secs(2),
        parallel: 4,
    })
    .unwrap();
    assert_eq!((t.ok, t.failed), (20, 0), "{t:?}");
    assert_eq!(t.by_backend.get("a"), Some(&20));
    assert_eq!(t.reply_from, vec![format!("127.0.0.1:{tcp}")]);
    assert_eq!(t.peers_seen_by_backend.len(), 20, "one peer per connection");

    for sockets in [UdpSockets::PerRequest, UdpSockets::One] {
        let u = run_udp(&UdpClientConfig {
            target: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, udp).into(),
            count: 10,
            timeout: Duration::from_secs(2),
            sockets,
        })
        .unwrap();
        assert_eq!((u.ok, u.failed), (10, 0), "{u:?}");
        assert_eq!(u.reply_from, vec![format!("127.0.0.1:{udp}")]);
        let want = if sockets == UdpSockets::One { 1 } else { 10 };
        assert_eq!(u.peers_seen_by_backend.len(), want, "{sockets:?}");
    }

    let stop = AtomicBool::new(false);
    let h = run_hold(
        &HoldConfig {
            target: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, tcp).into(),
            conns: 3,
            duration: Duration::from_millis(300),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
        },
        &stop,
        || {},
    )
    .unwrap();
    assert_eq!((h.broken, h.failed, h.switched), (0, 0, 0), "{h:?}");
    assert!(h.ok >= 6, "{h:?}");
    assert!(h.conns.iter().all(|c| c.backends == ["a"]));
    assert!(srv.served() >= 36);
    let summary_line = serde_json::to_string(&h).unwrap();
    assert_eq!(
        HoldSummary::from_output(&format!("ready\n{summary_line}\n")).unwrap(),
        h
    );
    srv.stop();
}

#[test]
fn refuses_targets_outside_the_plan() {
    assert!(parse_target("8.8.8.8:53").is_err());
    assert!(parse_target("10.1.2.3:80").is_err());
    assert!(parse_target("10.96.0.10:80").is_ok());
    assert!(parse_target("203.0.113.7:443").is_ok());
}

#[test]
fn ipv6_targets_follow_the_dual_stack_plan() {
    for ok in [
        "[fd00:10:244:1::2]:8080",
        "[fd00:10:96::a]:80",
        "[fd00:18::100]:443",
        "[::1]:30080",
        "[2001:db8::7]:53",
        // IPv4-mapped: a dual-stack socket reaching an IPv4 Service.
        "[::ffff:10.96.1.1]:9000",
    ] {
        let t = parse_target(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        assert_eq!(t.to_string(), ok);
    }
    for bad in [
        "[2001:4860:4860::8888]:53",
        "[fd00:10:245::1]:80",
        "[fd00:18:0:1::2]:80",
        "[fe80::1]:80",
        "[::ffff:8.8.8.8]:53",
        "[fd00:10:244:1::2]:0",
        "fd00:10:244:1::2:80",
    ] {
        assert!(parse_target(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn refused_connection_is_counted_not_fatal() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = run_tcp(&TcpClientConfig {
        target: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        count: 3,
        timeout: Duration::from_millis(500),
        parallel: 1,
    })
    .unwrap();
    assert_eq!((s.ok, s.failed), (0, 3));
    assert_eq!(
        s.errors.len(),
        1,
        "identical errors are kept once: {:?}",
        s.errors
    );
}
