//! The HTTP-level layer suite of `tower-idempotency-testkit` (a real server and client around
//! the layer) over a `SqliteStore`, each scenario on a database file of its own.

mod common;

tower_idempotency_testkit::layer_suite!(common::temp_store());
