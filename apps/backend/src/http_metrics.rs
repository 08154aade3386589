//! HTTP metrics beside the idempotency ones: requests by route template and status, their
//! latency, and the database pool's size and idle connections.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};

use crate::{app::AppState, db::Db};

/// Counter, by `method`, `route` (the matched template, `/api/deployments/{id}`, or
/// `unmatched`: raw paths would let any client create series) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";

/// Histogram (seconds), by `method` and `route`: from the request's arrival to its response
/// head (a streamed body is not waited for).
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Gauge: connections the database pool holds (idle and in use).
pub const DB_POOL_SIZE: &str = "db_pool_connections";

/// Gauge: idle connections of the database pool.
pub const DB_POOL_IDLE: &str = "db_pool_idle_connections";

/// Counts and times a request; refreshes the pool gauges (a scrape of `/metrics` is a
/// request too, so they are current when read).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    record_pool(&state.db);
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn record_pool(db: &Db) {
    let (size, idle) = match db {
        Db::Sqlite(pool) => (pool.size(), pool.num_idle()),
        Db::Postgres(pool) => (pool.size(), pool.num_idle()),
    };
    metrics::gauge!(DB_POOL_SIZE).set(f64::from(size));
    metrics::gauge!(DB_POOL_IDLE).set(idle as f64);
}

/// Descriptions for the exporter.
pub(crate) fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests by method, route template and status."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response head, by method and route template."
    );
    metrics::describe_gauge!(
        DB_POOL_SIZE,
        "Connections the database pool holds, idle and in use."
    );
    metrics::describe_gauge!(DB_POOL_IDLE, "Idle connections of the database pool.");
}
