//! The store conformance suite of `tower-idempotency`, each check on a database file of its
//! own, opened as the crate recommends (WAL, `busy_timeout` 5 s, 8 connections).

mod common;

tower_idempotency::store_conformance_tests!(common::temp_store());
