//! STUN: public address discovery against a real STUN server (coturn's `turnserver`, skipped with a
//! message when it is not installed) and change detection against a scripted one.
mod common;

use common::*;
use portway_native::protocol::stun::{encode_binding_response, STUN_HEADER_LEN};
use portway_native::runtime::runtime;
use portway_native::stun::StunClient;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[test]
fn public_address_from_coturn() {
    if !installed("turnserver", "--help") {
        eprintln!("SKIPPED public_address_from_coturn: `turnserver` (Debian package coturn) is not installed");
        return;
    }
    runtime().block_on(async {
        let port = free_udp_port().await;
        let dir = std::env::temp_dir().join(format!("portway-turn-{port}"));
        let _ = std::fs::create_dir_all(&dir);
        let _server = ChildGuard(
            Command::new("turnserver")
                .args([
                    "-n",
                    "--listening-ip=127.0.0.1",
                    &format!("--listening-port={port}"),
                    "--no-auth",
                    "--no-tls",
                    "--no-dtls",
                    "--stun-only",
                    "--no-cli",
                    "--log-file=stdout",
                    &format!("--pidfile={}", dir.join("turn.pid").display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start turnserver"),
        );
        let server = format!("127.0.0.1:{port}");
        // Ready when it answers (each query retransmits for up to 3.5 s).
        let mut client = StunClient::default();
        let mut direct = None;
        for _ in 0..5 {
            if let Ok(addr) = client.query(&server).await {
                direct = Some(addr);
                break;
            }
        }
        let direct = direct.expect("turnserver answers STUN");
        assert_eq!(direct.ip().to_string(), "127.0.0.1");

        let id = Arc::new(identity());
        let (hub, edge) = Setup::new(&id)
            .entry_keys(json!({ "stunIntervalSecs": 60 }))
            .edge(json!({ "stunServers": [server] }))
            .launch()
            .await;
        let found = edge.events.wait_type("publicIp.discovered").await;
        assert_eq!(found["ip"], "127.0.0.1");
        assert_eq!(found["server"], server);
        let port = found["port"].as_u64().unwrap();
        assert!(port > 0);
        let status = edge.status_json();
        assert_eq!(status["publicIp"], "127.0.0.1");
        assert_eq!(status["publicPort"], port);
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn public_ip_is_reported_when_it_changes() {
    runtime().block_on(async {
        // A scripted STUN server: answers with whatever address the test sets.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = sock.local_addr().unwrap().to_string();
        let answer: Arc<Mutex<SocketAddr>> =
            Arc::new(Mutex::new("198.51.100.7:4000".parse().unwrap()));
        let requests = Arc::new(Mutex::new(0usize));
        {
            let answer = answer.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    if n < STUN_HEADER_LEN {
                        continue;
                    }
                    *requests.lock().unwrap() += 1;
                    let mut tid = [0u8; 12];
                    tid.copy_from_slice(&buf[8..20]);
                    let mapped = *answer.lock().unwrap();
                    let _ = sock
                        .send_to(&encode_binding_response(&tid, mapped), from)
                        .await;
                }
            });
        }
        let id = Arc::new(identity());
        let (hub, edge) = Setup::new(&id)
            .entry_keys(json!({ "stunIntervalSecs": 1 }))
            .edge(json!({ "stunServers": [server.clone()] }))
            .launch()
            .await;
        let first = edge.events.wait_type("publicIp.discovered").await;
        assert_eq!(first["ip"], "198.51.100.7");
        assert_eq!(first["port"], 4000);
        // The next round finds the same address: no event.
        wait_until(|| *requests.lock().unwrap() >= 2).await;
        *answer.lock().unwrap() = "[2001:db8::9]:5000".parse().unwrap();
        let second = edge
            .events
            .wait_nth("publicIp.discovered", 1, |_| true)
            .await;
        assert_eq!(second["ip"], "2001:db8::9");
        assert_eq!(second["port"], 5000);
        let rounds = *requests.lock().unwrap();
        assert!(rounds >= 3, "{rounds}");
        assert_eq!(edge.events.of_type("publicIp.discovered").len(), 2);
        let status = edge.status_json();
        assert_eq!(status["publicIp"], "2001:db8::9");
        stop_pair(&hub, &edge).await;
    });
}
