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

fn dns_query_through_the_tunnel(transport: &str) {
    if !installed("dnsmasq", "--version") || !installed("dig", "--version") {
        eprintln!("SKIPPED dns_query_through_the_tunnel: dnsmasq and dig (Debian: dnsmasq-base, bind9-dnsutils) are needed");
        return;
    }
    runtime().block_on(async {
        let dns_port = free_udp_port().await;
        let _dnsmasq = ChildGuard(
            Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    &format!("--port={dns_port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--address=/portway.test/192.0.2.42",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq"),
        );
        // Ready when it answers directly. Until dnsmasq has bound its port a query is refused at
        // once (ICMP port unreachable), so the tries are spaced out: up to ~10 s in all.
        let mut ready = false;
        for _ in 0..100 {
            if dig(dns_port, "portway.test").await == "192.0.2.42" {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ready, "dnsmasq did not answer");

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
