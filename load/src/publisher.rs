//! Sending: HTTP requests (`/api/publish`, `/api/broadcast`, `/api/direct`) from a fixed number
//! of workers, at a fixed rate (request `i` is due at `i / rate` seconds) or as fast as the
//! workers go, until the count is reached or the deadline passes; or ([`send_batches`]) the
//! same messages N to a request through the batch endpoint. Receiving and reporting are
//! elsewhere; this keeps the answers and the failures by kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deliveries::{Acks, Clock, Live};
use crate::deployment::reqwest_kind;
use crate::report::Errors;

/// How much to send, how fast, how many at once, until when.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub count: u64,
    /// Requests per second; 0 sends as fast as the workers go.
    pub rate: f64,
    pub concurrency: usize,
    pub deadline: Instant,
}

impl Plan {
    /// Waits until request `seq` is due at the plan's rate (recording how late the sender is
    /// when it is behind); false when `seq` is past the count or would be due past the deadline.
    async fn wait_for(&self, seq: u64, started: Instant, sent: &mut Sent) -> bool {
        if seq >= self.count || Instant::now() >= self.deadline {
            return false;
        }
        if self.rate > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / self.rate);
            if due >= self.deadline {
                return false;
            }
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            } else {
                sent.max_lag_us = sent.max_lag_us.max((now - due).as_micros() as u64);
            }
        }
        true
    }
}

/// One request to send: path under the base, bearer credential, optional sticky cookie, text.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub bearer: String,
    pub sticky: Option<String>,
    pub text: String,
    /// Counted in here, at this client index, once the server accepts it.
    pub ack: Option<(Arc<Acks>, u32)>,
}

/// A request the server accepted (2xx), with its answer.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub seq: u64,
    pub body: Value,
    /// When the request went out and its answer came in (µs on the run's clock).
    pub sent_us: u64,
    pub answered_us: u64,
}

/// What sending did.
#[derive(Debug, Default)]
pub struct Sent {
    pub accepted: Vec<Accepted>,
    pub errors: Errors,
    /// HTTP round trips, µs.
    pub round_trips: Vec<u32>,
    /// When the first and last request went out (µs on the run's clock).
    pub first_us: u64,
    pub last_us: u64,
    /// How far the fixed-rate schedule fell behind at worst (µs).
    pub max_lag_us: u64,
}

/// Sends `plan.count` requests built by `make(seq, now µs)`.
pub async fn send<F>(
    http: reqwest::Client,
    base: String,
    plan: Plan,
    clock: Clock,
    live: Arc<Live>,
    make: F,
) -> Sent
where
    F: Fn(u64, u64) -> Request + Send + Sync + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let make = Arc::new(make);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency.max(1) {
        let (http, base, next, make, live) = (
            http.clone(),
            base.clone(),
            next.clone(),
            make.clone(),
            live.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut sent = Sent {
                first_us: u64::MAX,
                ..Sent::default()
            };
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if !plan.wait_for(seq, started, &mut sent).await {
                    break;
                }
                let now = clock.us();
                let request = make(seq, now);
                sent.first_us = sent.first_us.min(now);
                let mut builder = http
                    .post(format!("{base}{}", request.path))
                    .bearer_auth(&request.bearer)
                    .json(&json!({ "text": request.text }));
                if let Some(replica) = &request.sticky {
                    builder = builder.header("cookie", format!("sticky={replica}"));
                }
                let outcome = match builder.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.json::<Value>().await.unwrap_or(Value::Null);
                        if status.is_success() {
                            Ok(body)
                        } else {
                            Err(format!("http_{}", status.as_u16()))
                        }
                    }
                    Err(err) => Err(reqwest_kind(&err)),
                };
                let done = clock.us();
                sent.last_us = sent.last_us.max(done);
                sent.round_trips
                    .push(u32::try_from(done - now).unwrap_or(u32::MAX));
                live.sent.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(body) => {
                        if let Some((acks, client)) = &request.ack {
                            acks.bump(*client);
                        }
                        sent.accepted.push(Accepted {
                            seq,
                            body,
                            sent_us: now,
                            answered_us: done,
                        });
                    }
                    Err(kind) => sent.errors.add(&kind),
                }
            }
            sent
        }));
    }
    gather(workers).await
}

/// `POST /api/publish` with `bearer` (the API key): the messages `make` builds, `size` to a
/// request (the first request's cookie for all), at `plan.rate` messages per second. Each
/// message's result counts as its own: accepted (its result, in `accepted`) or an error by its
/// code. `round_trips` holds one entry per request. Only publishes to a client or a channel
/// can go in a batch; any other request counts as `not_batchable`.
pub async fn send_batches<F>(
    http: reqwest::Client,
    base: String,
    plan: Plan,
    (size, bearer): (usize, String),
    clock: Clock,
    live: Arc<Live>,
    make: F,
) -> Sent
where
    F: Fn(u64, u64) -> Request + Send + Sync + 'static,
{
    let size = size.max(1) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let make = Arc::new(make);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency.max(1) {
        let (http, base, next, make, live, bearer) = (
            http.clone(),
            base.clone(),
            next.clone(),
            make.clone(),
            live.clone(),
            bearer.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut sent = Sent {
                first_us: u64::MAX,
                ..Sent::default()
            };
            loop {
                let first = next.fetch_add(size, Ordering::Relaxed);
                if !plan.wait_for(first, started, &mut sent).await {
                    break;
                }
                let now = clock.us();
                sent.first_us = sent.first_us.min(now);
                let seqs: Vec<u64> = (first..(first + size).min(plan.count)).collect();
                let requests: Vec<Request> = seqs.iter().map(|&seq| make(seq, now)).collect();
                let mut items = Vec::with_capacity(requests.len());
                let mut batched = Vec::with_capacity(requests.len());
                for (seq, request) in seqs.iter().zip(&requests) {
                    match batch_item(request) {
                        Some(item) => {
                            items.push(item);
                            batched.push((*seq, request));
                        }
                        None => sent.errors.add("not_batchable"),
                    }
                }
                let mut builder = http
                    .post(format!("{base}/api/publish"))
                    .bearer_auth(&bearer)
                    .json(&json!({ "messages": items }));
                if let Some(replica) = requests.first().and_then(|r| r.sticky.as_ref()) {
                    builder = builder.header("cookie", format!("sticky={replica}"));
                }
                let outcome = match builder.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.json::<Value>().await.unwrap_or(Value::Null);
                        match body["results"].as_array() {
                            Some(results) if results.len() == batched.len() => Ok(results.clone()),
                            _ => Err(format!("http_{}", status.as_u16())),
                        }
                    }
                    Err(err) => Err(reqwest_kind(&err)),
                };
                let done = clock.us();
                sent.last_us = sent.last_us.max(done);
                sent.round_trips
                    .push(u32::try_from(done - now).unwrap_or(u32::MAX));
                live.sent.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                let results = match outcome {
                    Ok(results) => results,
                    Err(kind) => {
                        for _ in &batched {
                            sent.errors.add(&kind);
                        }
                        continue;
                    }
                };
                for ((seq, request), result) in batched.into_iter().zip(results) {
                    if let Some(code) = result["error"]["code"].as_str() {
                        sent.errors.add(code);
                        continue;
                    }
                    if let Some((acks, client)) = &request.ack {
                        acks.bump(*client);
                    }
                    sent.accepted.push(Accepted {
                        seq,
                        body: result,
                        sent_us: now,
                        answered_us: done,
                    });
                }
            }
            sent
        }));
    }
    gather(workers).await
}

/// A batch's message for a single-publish request: its target from the path.
fn batch_item(request: &Request) -> Option<Value> {
    if let Some(client) = request.path.strip_prefix("/api/publish/") {
        return Some(json!({ "client_id": client, "text": request.text }));
    }
    let channel = request
        .path
        .strip_prefix("/api/channels/")?
        .strip_suffix("/publish")?;
    Some(json!({ "channel": channel, "text": request.text }))
}

/// The workers' tallies as one.
async fn gather(workers: Vec<tokio::task::JoinHandle<Sent>>) -> Sent {
    let mut all = Sent {
        first_us: u64::MAX,
        ..Sent::default()
    };
    for worker in workers {
        let Ok(sent) = worker.await else {
            all.errors.add("sender_panicked");
            continue;
        };
        all.accepted.extend(sent.accepted);
        all.errors.merge(&sent.errors);
        all.round_trips.extend(sent.round_trips);
        all.first_us = all.first_us.min(sent.first_us);
        all.last_us = all.last_us.max(sent.last_us);
        all.max_lag_us = all.max_lag_us.max(sent.max_lag_us);
    }
    if all.first_us == u64::MAX {
        all.first_us = 0;
    }
    all.accepted.sort_by_key(|a| a.seq);
    all
}

impl Sent {
    /// Requests sent, accepted or not.
    pub fn attempted(&self) -> u64 {
        self.accepted.len() as u64 + self.errors.total()
    }

    /// Seconds from the first request out to the last answer in.
    pub fn seconds(&self) -> f64 {
        self.last_us.saturating_sub(self.first_us) as f64 / 1e6
    }
}
