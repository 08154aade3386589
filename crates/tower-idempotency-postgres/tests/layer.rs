//! The HTTP-level layer suite of `tower-idempotency-testkit` (a real server and client
//! around the layer) over PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). All scenarios of one run share one fresh
//! table; they use unique users and keys.

mod common;

tower_idempotency_testkit::layer_suite!(common::store_on(common::process_table()));
