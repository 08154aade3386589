//! The store conformance suite against a real PostgreSQL server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). All checks of one run share one fresh table.

mod common;

tower_idempotency::store_conformance_tests!(common::store_on(common::process_table()));
