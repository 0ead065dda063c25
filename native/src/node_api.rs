//! The functions exported to JS (see `NativeAddon` in docs/architecture.md): argument conversion,
//! handles and promises only.
use crate::config::{parse_edge_config, parse_edges, parse_hub_config};
use crate::edge::Edge;
use crate::error::AddonError;
use crate::events::{Deliver, EventSink};
use crate::hub::Hub;
use crate::protocol::GoAwayReason;
use crate::runtime::runtime;
use crate::transport::tls;
use neon::prelude::*;
use std::path::Path;
use std::sync::Arc;

pub struct HubBox(Hub);
impl Finalize for HubBox {}

pub struct EdgeBox(Edge);
impl Finalize for EdgeBox {}

pub fn register(cx: &mut ModuleContext) -> NeonResult<()> {
    cx.export_function("version", version)?;
    cx.export_function("tlsIdentity", tls_identity)?;
    cx.export_function("certFingerprint", cert_fingerprint)?;
    cx.export_function("hubStart", hub_start)?;
    cx.export_function("hubUpdateEdges", hub_update_edges)?;
    cx.export_function("hubAdmitEdge", hub_admit_edge)?;
    cx.export_function("hubDropEdge", hub_drop_edge)?;
    cx.export_function("hubStatus", hub_status)?;
    cx.export_function("hubStop", hub_stop)?;
    cx.export_function("edgeStart", edge_start)?;
    cx.export_function("edgeStatus", edge_status)?;
    cx.export_function("edgeStop", edge_stop)?;
    Ok(())
}

fn throw<'a, T>(cx: &mut impl Context<'a>, err: AddonError) -> NeonResult<T> {
    cx.throw_error(err.to_string())
}

fn to_json<'a, T: serde::Serialize>(
    cx: &mut FunctionContext<'a>,
    value: &T,
) -> JsResult<'a, JsString> {
    match serde_json::to_string(value) {
        Ok(json) => Ok(cx.string(json)),
        Err(e) => cx.throw_error(format!("EIO: cannot serialize: {e}")),
    }
}

/// Delivers event batches to `callback` on the JS thread, one call per batch, in order.
fn js_deliver(cx: &mut FunctionContext, callback: Handle<JsFunction>) -> Deliver {
    let channel = cx.channel();
    let callback = Arc::new(callback.root(cx));
    Arc::new(move |batch: String| {
        let callback = callback.clone();
        // Fails only while Node is shutting down, when nobody is listening any more.
        let _ = channel.try_send(move |mut cx| {
            let callback = callback.to_inner(&mut cx);
            let batch = cx.string(batch);
            callback.call_with(&cx).arg(batch).exec(&mut cx)
        });
    })
}

fn version(mut cx: FunctionContext) -> JsResult<JsString> {
    Ok(cx.string(env!("CARGO_PKG_VERSION")))
}

fn tls_identity(mut cx: FunctionContext) -> JsResult<JsString> {
    let cert_path = cx.argument::<JsString>(0)?.value(&mut cx);
    let key_path = cx.argument::<JsString>(1)?.value(&mut cx);
    let sans_json = cx.argument::<JsString>(2)?.value(&mut cx);
    let sans: Vec<String> = match serde_json::from_str(&sans_json) {
        Ok(sans) => sans,
        Err(e) => {
            return throw(
                &mut cx,
                AddonError::InvalidConfig(format!(
                    "subjectAltNames must be a JSON array of strings: {e}"
                )),
            )
        }
    };
    match tls::tls_identity(Path::new(&cert_path), Path::new(&key_path), &sans) {
        Ok(identity) => to_json(&mut cx, &identity),
        Err(e) => throw(&mut cx, e),
    }
}

fn cert_fingerprint(mut cx: FunctionContext) -> JsResult<JsString> {
    let pem = cx.argument::<JsString>(0)?.value(&mut cx);
    match tls::cert_fingerprint(&pem) {
        Ok(fp) => Ok(cx.string(fp)),
        Err(e) => throw(&mut cx, e),
    }
}

fn hub_start(mut cx: FunctionContext) -> JsResult<JsPromise> {
    let config_json = cx.argument::<JsString>(0)?.value(&mut cx);
    let callback = cx.argument::<JsFunction>(1)?;
    let (deferred, promise) = cx.promise();
    let channel = cx.channel();
    let settings = match parse_hub_config(&config_json) {
        Ok(settings) => settings,
        Err(e) => {
            deferred.settle_with(&channel, move |mut cx| {
                cx.throw_error::<_, Handle<JsUndefined>>(e.to_string())
            });
            return Ok(promise);
        }
    };
    let events = EventSink::start(js_deliver(&mut cx, callback));
    runtime().spawn(async move {
        let started = Hub::start(settings, events).await;
        deferred.settle_with(&channel, move |mut cx| match started {
            Ok(hub) => Ok(cx.boxed(HubBox(hub))),
            Err(e) => cx.throw_error(e.to_string()),
        });
    });
    Ok(promise)
}

fn hub_update_edges(mut cx: FunctionContext) -> JsResult<JsUndefined> {
    let hub = cx.argument::<JsBox<HubBox>>(0)?;
    let edges_json = cx.argument::<JsString>(1)?.value(&mut cx);
    match parse_edges(&edges_json) {
        Ok(edges) => match hub.0.update_edges(edges) {
            Ok(()) => Ok(cx.undefined()),
            Err(e) => throw(&mut cx, e),
        },
        Err(e) => throw(&mut cx, e),
    }
}

/// `hubAdmitEdge(hub, sessionId, admit, reason, message): boolean`
fn hub_admit_edge(mut cx: FunctionContext) -> JsResult<JsBoolean> {
    let hub = cx.argument::<JsBox<HubBox>>(0)?;
    let session_id = cx.argument::<JsString>(1)?.value(&mut cx);
    let admit = cx.argument::<JsBoolean>(2)?.value(&mut cx);
    let reason = cx.argument::<JsString>(3)?.value(&mut cx);
    let message = cx.argument::<JsString>(4)?.value(&mut cx);
    let matched = hub.0.admit_edge(&session_id, admit, &reason, &message);
    Ok(cx.boolean(matched))
}

/// `hubDropEdge(hub, edgeId, reason: "leaseLost" | "notOwner", message): boolean`
fn hub_drop_edge(mut cx: FunctionContext) -> JsResult<JsBoolean> {
    let hub = cx.argument::<JsBox<HubBox>>(0)?;
    let edge_id = cx.argument::<JsString>(1)?.value(&mut cx);
    let reason = cx.argument::<JsString>(2)?.value(&mut cx);
    let message = cx.argument::<JsString>(3)?.value(&mut cx);
    let reason = match reason.as_str() {
        "leaseLost" => GoAwayReason::LeaseLost,
        "notOwner" => GoAwayReason::NotOwner,
        other => {
            let detail = format!("hubDropEdge reason must be leaseLost or notOwner, got {other:?}");
            return throw(&mut cx, AddonError::InvalidConfig(detail));
        }
    };
    let found = hub.0.drop_edge(&edge_id, reason, &message);
    Ok(cx.boolean(found))
}

fn hub_status(mut cx: FunctionContext) -> JsResult<JsString> {
    let hub = cx.argument::<JsBox<HubBox>>(0)?;
    let status = hub.0.status();
    to_json(&mut cx, &status)
}

fn hub_stop(mut cx: FunctionContext) -> JsResult<JsPromise> {
    let hub = cx.argument::<JsBox<HubBox>>(0)?.0.clone();
    let (deferred, promise) = cx.promise();
    let channel = cx.channel();
    runtime().spawn(async move {
        hub.stop().await;
        deferred.settle_with(&channel, |mut cx| Ok(cx.undefined()));
    });
    Ok(promise)
}

fn edge_start(mut cx: FunctionContext) -> JsResult<JsBox<EdgeBox>> {
    let config_json = cx.argument::<JsString>(0)?.value(&mut cx);
    let callback = cx.argument::<JsFunction>(1)?;
    let settings = match parse_edge_config(&config_json) {
        Ok(settings) => settings,
        Err(e) => return throw(&mut cx, e),
    };
    let events = EventSink::start(js_deliver(&mut cx, callback));
    let _guard = runtime().enter();
    match Edge::start(settings, events) {
        Ok(edge) => Ok(cx.boxed(EdgeBox(edge))),
        Err(e) => throw(&mut cx, e),
    }
}

fn edge_status(mut cx: FunctionContext) -> JsResult<JsString> {
    let edge = cx.argument::<JsBox<EdgeBox>>(0)?;
    let status = edge.0.status();
    to_json(&mut cx, &status)
}

fn edge_stop(mut cx: FunctionContext) -> JsResult<JsPromise> {
    let edge = cx.argument::<JsBox<EdgeBox>>(0)?.0.clone();
    let (deferred, promise) = cx.promise();
    let channel = cx.channel();
    runtime().spawn(async move {
        edge.stop().await;
        deferred.settle_with(&channel, |mut cx| Ok(cx.undefined()));
    });
    Ok(promise)
}
