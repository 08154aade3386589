//! The HTTP-level layer suite of `tower-idempotency-testkit` (a real server and client
//! around the layer) over Redis: one server (`REDIS_URL`, default `redis://127.0.0.1:6379`)
//! and a cluster (`REDIS_CLUSTER_URLS`, default the local cluster of `scripts/redis-cluster`).
//! Every store has its own random key prefix, and the scenarios use unique users and keys.

mod common;

mod single_node {
    tower_idempotency_testkit::layer_suite!(super::common::single_node_store());
}

mod cluster {
    tower_idempotency_testkit::layer_suite!(super::common::cluster_store());
}
