//! End-to-end: a hub and an edge on loopback relaying real TCP connections. Every scenario runs
//! over every transport (`every_transport!`).
mod common;

use common::*;
use portway_native::runtime::runtime;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn echo_with_proxy_v1_and_events(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, mut lines) = echo_target().await;
        let edge_port = free_port().await;
        let (hub, edge) = tcp_pair(&id, edge_port, target, transport).await;

        let reply = round_trip(edge_port, b"hello portway").await.unwrap();
        assert_eq!(reply, b"hello portway");
        let line = lines.recv().await.unwrap();
        assert!(
            line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
            "{line}"
        );
        assert!(line.ends_with(&format!(" {edge_port}")), "{line}");

        let closed = hub.events.wait_type("stream.closed").await;
        assert_eq!(closed["bytesIn"], 13);
        assert_eq!(closed["bytesOut"], 13);
        assert_eq!(closed["reason"], "clientClosed");
        assert_eq!(closed["target"], format!("127.0.0.1:{target}"));
        let closed = edge.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "clientClosed");
        assert_eq!(closed["bytesIn"], 13);

        let connected = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["transport"], transport);
        assert_eq!(connected["pinned"], true);
        assert_eq!(connected["hubFingerprint"], id.fingerprint.as_str());
        assert!(edge.events.of_type("tunnel.unpinned").is_empty());
        let status = hub.status_json();
        assert_eq!(status["edges"][0]["edgeId"], "e1");
        assert_eq!(status["edges"][0]["transport"], transport);
        assert_eq!(status["edges"][0]["bytesIn"], 13);

        edge.edge.stop().await;
        hub.hub.stop().await;
        hub.hub.stop().await;
        hub.events.wait_type("hub.stopped").await;
        assert_eq!(hub.events.of_type("hub.stopped").len(), 1);
        // The edge's connect burst (connecting, connected, ports.assigned, …) shares batches.
        assert!(
            edge.events.batches() < edge.events.all().len(),
            "events should arrive batched"
        );
    });
}

fn half_close_keeps_the_other_direction_open(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        // Target: read everything until EOF, then answer with the byte count, then close.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_proxy_line(&mut sock).await;
            let mut all = Vec::new();
            sock.read_to_end(&mut all).await.unwrap();
            sock.write_all(format!("got {}", all.len()).as_bytes())
                .await
                .unwrap();
            sock.shutdown().await.unwrap();
        });
        let edge_port = free_port().await;
        let (hub, edge) = tcp_pair(&id, edge_port, target, transport).await;
        let reply = round_trip(edge_port, &vec![7u8; 300_000]).await.unwrap();
        assert_eq!(reply, b"got 300000");
        let closed = hub.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "clientClosed", "{closed}");
        stop_pair(&hub, &edge).await;
    });
}

fn bulk_data_both_directions_many_streams(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, edge_port, _) = echo_setup(&id).await;
        let (hub, edge) = setup.transport(transport).start().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            tasks.push(tokio::spawn(async move {
                let data = random_bytes(2_000_000 + i * 12_345);
                let reply = round_trip(edge_port, &data).await.unwrap();
                assert!(reply == data, "stream {i}: echo differs");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for n in 0..8 {
            let closed = hub.events.wait_nth("stream.closed", n, |_| true).await;
            assert_eq!(closed["reason"], "clientClosed");
        }
        stop_pair(&hub, &edge).await;
    });
}

fn slow_reader_does_not_stall_other_streams(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        // Port A's target floods; port B's target echoes.
        let flood = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flood_port = flood.local_addr().unwrap().port();
        const FLOOD: usize = 32 * 1024 * 1024;
        tokio::spawn(async move {
            let (mut sock, _) = flood.accept().await.unwrap();
            read_proxy_line(&mut sock).await;
            let chunk = vec![1u8; 64 * 1024];
            for _ in 0..FLOOD / chunk.len() {
                if sock.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = sock.shutdown().await;
        });
        let (echo_port, _lines) = echo_target().await;
        let port_a = free_port().await;
        let port_b = free_port().await;
        let (hub, edge) = Setup::new(&id)
            .tcp(&[port_a, port_b])
            .targets(json!({
                port_a.to_string(): format!("127.0.0.1:{flood_port}"),
                port_b.to_string(): format!("127.0.0.1:{echo_port}"),
            }))
            .transport(transport)
            .start()
            .await;

        // Open the flood stream and do not read from it.
        let mut slow = TcpStream::connect(("127.0.0.1", port_a)).await.unwrap();
        hub.events.wait_type("stream.opened").await;
        // The other stream must still work promptly, many times over.
        for _ in 0..20 {
            let reply = tokio::time::timeout(Duration::from_secs(2), round_trip(port_b, b"ping"))
                .await
                .expect("echo stalled behind a slow stream")
                .unwrap();
            assert_eq!(reply, b"ping");
        }
        // Now drain the flood: everything arrives.
        let mut total = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = slow.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, FLOOD);
        stop_pair(&hub, &edge).await;
    });
}

fn target_refused_closes_the_client(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let dead_target = free_port().await;
        let edge_port = free_port().await;
        let (hub, edge) = tcp_pair(&id, edge_port, dead_target, transport).await;
        // Closed (EOF or reset), never hanging. The reset can be so quick that it already shows as
        // the result of connect() itself.
        match TcpStream::connect(("127.0.0.1", edge_port)).await {
            Ok(mut sock) => {
                let mut buf = [0u8; 16];
                let read = tokio::time::timeout(WAIT, sock.read(&mut buf))
                    .await
                    .expect("client hung");
                assert!(matches!(read, Ok(0) | Err(_)));
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
        let closed = hub.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "targetRefused");
        let closed = edge.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "targetRefused");
        stop_pair(&hub, &edge).await;
    });
}

every_transport!(
    echo_with_proxy_v1_and_events,
    half_close_keeps_the_other_direction_open,
    bulk_data_both_directions_many_streams,
    slow_reader_does_not_stall_other_streams,
    target_refused_closes_the_client
);
