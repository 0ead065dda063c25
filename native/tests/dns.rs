//! A real DNS query through the tunnel: `dig` → edge UDP port → hub → `dnsmasq`, with
//! `proxyProtocolUdp: "none"` (DNS servers do not speak PROXY), over every transport. Skipped with
//! a message when dnsmasq or dig is not installed.
mod common;

use common::*;
use portway_native::runtime::runtime;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;

async fn dig(port: u16, name: &str) -> String {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                &name,
                "A",
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .await
    .unwrap()
}

/// A port free for UDP and TCP a moment ago (dnsmasq binds both).
async fn free_dns_port() -> u16 {
    loop {
        let port = free_udp_port().await;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts dnsmasq answering `portway.test` and waits until it answers directly. A port taken between the check
/// and dnsmasq's bind (its TCP side can lose to another test's ephemeral connection) makes it exit: then it is
/// started again on another port, up to 3 times, and its stderr is shown when it never answers.
async fn start_dnsmasq() -> (ChildGuard, u16) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let port = free_dns_port().await;
        let mut child = ChildGuard(
            Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--address=/portway.test/192.0.2.42",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start dnsmasq"),
        );
        // Until dnsmasq has bound its port a query is refused at once (ICMP port unreachable), so
        // the tries are spaced out: up to ~10 s in all.
        for _ in 0..100 {
            if dig(port, "portway.test").await == "192.0.2.42" {
                return (child, port);
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
                }
                errors.push(format!(
                    "port {port}: dnsmasq exited ({status}): {}",
                    stderr.trim()
                ));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    panic!("dnsmasq did not answer: {}", errors.join("; "));
}

fn dns_query_through_the_tunnel(transport: &str) {
    if !installed("dnsmasq", "--version") || !installed("dig", "--version") {
        eprintln!("SKIPPED dns_query_through_the_tunnel: dnsmasq and dig (Debian: dnsmasq-base, bind9-dnsutils) are needed");
        return;
    }
    runtime().block_on(async {
        let (_dnsmasq, dns_port) = start_dnsmasq().await;

        let id = Arc::new(identity());
        let edge_port = free_udp_port().await;
        let hub_extra = json!({ "proxyProtocolUdp": "none" });
        let (hub, edge) = udp_pair(&id, edge_port, dns_port, transport, hub_extra).await;
        let mut answer = String::new();
        for _ in 0..3 {
            answer = dig(edge_port, "portway.test").await;
            if !answer.is_empty() {
                break;
            }
        }
        assert_eq!(answer, "192.0.2.42");
        // Each dig query comes from a fresh source port: one UDP session per query.
        let opened = hub.events.wait_type("udp.opened").await;
        assert_eq!(opened["target"], format!("127.0.0.1:{dns_port}"));
        stop_pair(&hub, &edge).await;
    });
}

every_transport!(dns_query_through_the_tunnel);
