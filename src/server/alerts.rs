//! `GET /v1/alerts` and `GET /v1/alerts/stream`: alerts firing now, recent state
//! changes, and a live, resumable stream of them.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value as Json_};
use tokio::sync::broadcast::error::RecvError;
use weir_alerts::Alert;

use super::error::ApiError;
use crate::auth::Principal;
use super::AppState;

/// `{"active": [...], "recent": [...], "receivers": [...]}`, newest last.
pub async fn list(State(app): State<AppState>, Extension(principal): Extension<Principal>) -> Json<Json_> {
    let (mut active, mut recent) = app.alerting.list();
    active.retain(|a| visible(&principal, a));
    recent.retain(|a| visible(&principal, a));
    Json(json!({ "active": active.iter().map(to_json).collect::<Vec<_>>(), "recent": recent.iter().map(to_json).collect::<Vec<_>>(), "receivers": app.alerting.delivery_stats() }))
}

/// A tenant-scoped key sees the alerts of its tenant only.
fn visible(principal: &Principal, a: &Alert) -> bool {
    principal.tenant.is_none() || a.labels.get("tenant").is_some_and(|t| principal.sees(t))
}

fn to_json(a: &Alert) -> Json_ {
    let time = |ms: i64| weir_engine::time::format_rfc3339_ms(ms);
    json!({
        "fingerprint": a.fingerprint,
        "status": a.status,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": time(a.starts_at),
        "endsAt": a.ends_at.map(time),
        "seq": a.seq,
    })
}

fn event(a: &Alert) -> SseEvent {
    SseEvent::default().event("alert").id(a.seq.to_string()).data(to_json(a).to_string())
}

/// Events `alert` (id = the change's sequence number). Without `Last-Event-ID`, or when
/// the changes after it are no longer kept, it starts with a `reset` event and the
/// alerts firing now; with it, the changes since.
pub async fn stream(State(app): State<AppState>, Extension(principal): Extension<Principal>, headers: HeaderMap) -> Result<Response, ApiError> {
    let last = match headers.get("last-event-id").map(|v| v.to_str().map(|s| s.trim().parse::<u64>())) {
        None => None,
        Some(Ok(Ok(seq))) => Some(seq),
        Some(_) => return Err(ApiError::bad_request("Last-Event-ID must be a sequence number (a whole number)")),
    };
    let (fresh, start, rx) = app.alerting.subscribe(last);
    // the receiver was taken with the start, under one lock: it holds exactly the later changes
    let seen = start.last().map_or(0, |a| a.seq);
    let mut pending: VecDeque<SseEvent> = VecDeque::new();
    if fresh {
        pending.push_back(SseEvent::default().event("reset").data(json!({"requested": last, "active": start.len()}).to_string()));
    }
    pending.extend(start.iter().filter(|a| visible(&principal, a)).map(event));
    let events = futures::stream::unfold((rx, pending, seen, principal), |(mut rx, mut pending, mut seen, principal)| async move {
        loop {
            if let Some(e) = pending.pop_front() {
                return Some((e, (rx, pending, seen, principal)));
            }
            match rx.recv().await {
                // changes already sent at the start are skipped
                Ok(a) if a.seq <= seen => continue,
                Ok(a) => {
                    seen = a.seq;
                    if visible(&principal, &a) {
                        pending.push_back(event(&a));
                    }
                }
                Err(RecvError::Lagged(_)) => pending.push_back(SseEvent::default().event("reset").data(json!({"reason": "the subscriber fell behind; reconnect with Last-Event-ID"}).to_string())),
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let mut shutdown = app.shutdown.clone();
    let events = events.take_until(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    Ok(Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default()).into_response())
}
