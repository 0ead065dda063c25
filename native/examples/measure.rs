//! Quick measurements of the native data path on loopback: UDP packets/s and loss through the
//! tunnel (TLS frames and QUIC datagrams) against direct loopback at several send rates, TCP bulk
//! throughput with iperf3 through the edge (TLS vs QUIC vs direct) and TCP round-trip latency.
//!
//!   cargo run --release --example measure [udp|tcp|all] [seconds-per-run]
//!
//! Hub and edges run in this process on the addon's runtime (2 workers); senders, sinks and
//! iperf3 run outside it. Numbers are for comparing transports on one machine, not absolutes.
use portway_native::config::{parse_edge_config, parse_hub_config};
use portway_native::edge::Edge;
use portway_native::events::EventSink;
use portway_native::hub::Hub;
use portway_native::runtime::runtime;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 100;
const RATES: [Option<u64>; 7] = [
    Some(5_000),
    Some(20_000),
    Some(50_000),
    Some(100_000),
    Some(120_000),
    Some(150_000),
    None,
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Counts datagrams arriving on a socket until stopped.
struct Sink {
    port: u16,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn sink() -> Sink {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (count.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Sink { port, count, stop }
}

/// Sends for `secs` at `rate` (None: as fast as possible) to `to`; returns (sent, received, pps).
fn udp_run(to: SocketAddr, sink: &Sink, rate: Option<u64>, secs: f64) -> (u64, u64, f64) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20);
    // Open the session and let it settle (the hub sets up its upstream socket).
    for _ in 0..3 {
        let _ = sock.send_to(&[0u8; PAYLOAD], to);
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = sink.count.load(Ordering::Relaxed);
    let payload = [7u8; PAYLOAD];
    let start = Instant::now();
    let total = Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while start.elapsed() < total {
        let due = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r as f64) as u64,
            None => sent + 64,
        };
        while sent < due {
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        if rate.is_some() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let send_time = start.elapsed().as_secs_f64();
    // Wait until nothing more arrives.
    let mut last = sink.count.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = sink.count.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let received = last - before;
    (sent, received, received as f64 / send_time)
}

fn identity() -> (String, String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        generated.cert.pem(),
        generated.key_pair.serialize_pem(),
        portway_native::transport::tls::fingerprint_der(generated.cert.der()),
    )
}

fn quiet() -> EventSink {
    EventSink::start(Arc::new(|_| {}))
}

struct Setup {
    hub: Hub,
    edges: Vec<(String, Edge)>,
}

/// One hub and one edge per transport; every edge maps `tcp[i]` / `udp[i]` to the given targets.
fn start_tunnels(
    tcp_target: u16,
    udp_target: u16,
    transports: &[&str],
) -> (Setup, Vec<(u16, u16)>) {
    let (cert, key, fp) = identity();
    let ports: Vec<(u16, u16)> = transports
        .iter()
        .map(|_| (free_port(), free_udp_port()))
        .collect();
    let edges: Vec<_> = transports
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (_, (tcp, udp)))| {
            json!({ "id": format!("e{i}"), "secret": "s", "listenPorts": [tcp], "listenPortsUdp": [udp],
                    "targets": { tcp.to_string(): format!("127.0.0.1:{tcp_target}"),
                                 udp.to_string(): format!("127.0.0.1:{udp_target}") } })
        })
        .collect();
    let hub_config = json!({ "tunnelPort": 0, "bindHost": "127.0.0.1", "certPem": cert, "keyPem": key,
        "proxyProtocolTcp": "none", "proxyProtocolUdp": "none", "edges": edges });
    let hub = runtime()
        .block_on(Hub::start(
            parse_hub_config(&hub_config.to_string()).unwrap(),
            quiet(),
        ))
        .unwrap();
    let hub_port = hub.port();
    let mut started = Vec::new();
    for (i, transport) in transports.iter().enumerate() {
        let config = json!({ "hubs": [{ "host": "127.0.0.1", "port": hub_port }], "edgeId": format!("e{i}"),
            "secret": "s", "bindAddress": "127.0.0.1", "hubCertFingerprint": fp, "transportMode": transport });
        let _guard = runtime().enter();
        let edge = Edge::start(parse_edge_config(&config.to_string()).unwrap(), quiet()).unwrap();
        started.push((transport.to_string(), edge));
    }
    // Ready when every edge reports its ports.
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|(_, e)| {
        let s = e.status();
        !s.connected || s.listen_ports_udp.is_empty()
    }) {
        assert!(Instant::now() < deadline, "edges did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    (
        Setup {
            hub,
            edges: started,
        },
        ports,
    )
}

fn stop(setup: Setup) {
    for (_, edge) in &setup.edges {
        runtime().block_on(edge.stop());
    }
    runtime().block_on(setup.hub.stop());
}

fn udp(secs: f64) {
    println!("\n## UDP: {PAYLOAD}-byte datagrams, one session, {secs} s per run\n");
    println!("| path | offered pps | sent | received | delivered pps | loss | vs direct | counted drops (edge / hub) | kernel rcvbuf drops |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let sink = sink();
    let (setup, ports) = start_tunnels(free_port(), sink.port, &["tcpTls", "quic"]);
    for rate in RATES {
        let offered = rate.map_or("max".to_string(), |r| r.to_string());
        let direct_to: SocketAddr = ([127, 0, 0, 1], sink.port).into();
        let kernel_before = rcvbuf_errors();
        let (ds, dr, dpps) = udp_run(direct_to, &sink, rate, secs);
        println!(
            "| direct | {offered} | {ds} | {dr} | {dpps:.0} | {:.3}% | | | {} |",
            loss(ds, dr),
            rcvbuf_errors() - kernel_before
        );
        for (i, ((transport, edge), (_, udp_port))) in setup.edges.iter().zip(&ports).enumerate() {
            let hub_dropped = || {
                let id = format!("e{i}");
                setup
                    .hub
                    .status()
                    .edges
                    .iter()
                    .find(|e| e.edge_id == id)
                    .map_or(0, |e| e.udp_dropped)
            };
            let (edge_before, hub_before) = (edge.status().udp_dropped, hub_dropped());
            let kernel_before = rcvbuf_errors();
            let (s, r, pps) = udp_run(([127, 0, 0, 1], *udp_port).into(), &sink, rate, secs);
            println!(
                "| {transport} | {offered} | {s} | {r} | {pps:.0} | {:.3}% | {:.0}% | {} / {} | {} |",
                loss(s, r),
                100.0 * pps / dpps.max(1.0),
                edge.status().udp_dropped - edge_before,
                hub_dropped() - hub_before,
                rcvbuf_errors() - kernel_before
            );
        }
    }
    sink.stop.store(true, Ordering::Relaxed);
    stop(setup);
}

/// The system-wide count of UDP datagrams the kernel dropped for a full receive buffer.
fn rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn loss(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    100.0 * (sent.saturating_sub(received)) as f64 / sent as f64
}

fn iperf(port: u16, secs: u64, reverse: bool) -> Option<f64> {
    let mut args = vec![
        "-c".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let out = Command::new("iperf3").args(&args).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64()
}

/// Median and 99th percentile of `n` 1-byte request/response round trips, in µs.
fn rtt(port: u16, n: usize) -> (f64, f64) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut samples = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n + 50 {
        let t = Instant::now();
        sock.write_all(&[1]).unwrap();
        sock.read_exact(&mut b).unwrap();
        if i >= 50 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[n / 2], samples[n * 99 / 100])
}

fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = sock.set_nodelay(true);
                let mut rd = sock.try_clone().unwrap();
                let mut wr = sock;
                let _ = std::io::copy(&mut rd, &mut wr);
            });
        }
    });
    port
}

fn tcp(secs: f64) {
    let secs = secs.max(1.0) as u64;
    if Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("\n(iperf3 not installed: TCP throughput skipped)");
        return;
    }
    let iperf_port = free_port();
    let mut server = Command::new("iperf3")
        .args(["-s", "-p", &iperf_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    println!("\n## TCP bulk (iperf3, one stream, {secs} s per run)\n");
    println!("| path | edge→target Gbit/s | target→edge (-R) Gbit/s |");
    println!("| --- | ---: | ---: |");
    let gbps = |v: Option<f64>| v.map_or("n/a".into(), |b| format!("{:.2}", b / 1e9));
    println!(
        "| direct | {} | {} |",
        gbps(iperf(iperf_port, secs, false)),
        gbps(iperf(iperf_port, secs, true))
    );
    let (setup, ports) = start_tunnels(iperf_port, free_udp_port(), &["tcpTls", "quic"]);
    for ((transport, _), (tcp_port, _)) in setup.edges.iter().zip(&ports) {
        println!(
            "| {transport} | {} | {} |",
            gbps(iperf(*tcp_port, secs, false)),
            gbps(iperf(*tcp_port, secs, true))
        );
    }
    stop(setup);
    let _ = server.kill();
    let _ = server.wait();

    println!("\n## TCP round trip (1 byte each way, 2000 samples)\n");
    println!("| path | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: |");
    let echo = echo_server();
    let (p50, p99) = rtt(echo, 2000);
    println!("| direct | {p50:.0} | {p99:.0} |");
    let (setup, ports) = start_tunnels(echo, free_udp_port(), &["tcpTls", "quic"]);
    for ((transport, _), (tcp_port, _)) in setup.edges.iter().zip(&ports) {
        let (p50, p99) = rtt(*tcp_port, 2000);
        println!("| {transport} | {p50:.0} | {p99:.0} |");
    }
    stop(setup);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("all", String::as_str);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    if what == "udp" || what == "all" {
        udp(secs);
    }
    if what == "tcp" || what == "all" {
        tcp(secs);
    }
}
