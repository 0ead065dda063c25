//! Portway native addon: the tunnel data path (TLS transport, multiplexer, relay, hub and edge
//! roles) and its thin Neon surface. See docs/architecture.md for the contract with TypeScript.
pub mod config;
pub mod edge;
pub mod error;
pub mod events;
pub mod hub;
pub mod mux;
mod node_api;
pub mod protocol;
pub mod relay;
pub mod runtime;
pub mod status;
pub mod stun;
pub mod transport;
pub mod tunnel;
pub mod udp;
#[cfg(target_os = "linux")]
mod udp_mmsg;

#[neon::main]
fn main(mut cx: neon::prelude::ModuleContext) -> neon::prelude::NeonResult<()> {
    node_api::register(&mut cx)
}
