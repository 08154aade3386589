//! `memory`: what one completed key costs in each store, with 1 KiB responses.
//!
//! - In memory: the resident size (`VmRSS`) a fresh process gains by holding N completed keys,
//!   driven through the store API directly (no HTTP), divided by N.
//! - Redis: `MEMORY USAGE` of a sample of the keys, and `used_memory` growth / N, on a private
//!   `redis-server` (nobody else's keys in the count).
//! - PostgreSQL: `pg_total_relation_size` of the table (heap, TOAST, both indexes) / N, as
//!   written and after `VACUUM FULL`.
//!
//! "Overhead" is what a key costs beyond its payload: for our stores the 32-byte record id plus
//! the encoded response `complete` received; for Redis, as Redis counts it, the key and value
//! lengths.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tower_idempotency::{
    Fingerprint, IdempotencyKey,
    store::{Claim, IdempotencyStore, RecordId},
};
use tower_idempotency_postgres::sqlx;

use crate::{
    results::{self, KeyCost, MemoryResults},
    services::{self, PrivateRedis},
};

/// The response body every stored key carries.
pub const BODY_BYTES: usize = 1024;
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Concurrent writers filling Redis and PostgreSQL.
const WRITERS: u64 = 16;

/// The stores measured in a child process.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChildStore {
    /// tower-idempotency's `MemoryStore`.
    Ours,
    /// `idempotent`'s memory store (for comparison).
    Idempotent,
}

/// What a child prints.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    keys: u64,
    payload_bytes: u64,
    rss_before: u64,
    rss_after: u64,
}

/// The record `complete` gets for a 201 with `content-type: application/json` and a 1 KiB
/// body, in the layer's documented v1 encoding (see `tower_idempotency::record`).
pub fn encoded_response(n: u64) -> Bytes {
    let (name, value) = (&b"content-type"[..], &b"application/json"[..]);
    let mut out = BytesMut::with_capacity(6 + 6 + name.len() + value.len() + BODY_BYTES);
    out.put_u8(1); // format version
    out.put_u8(0); // body kept
    out.put_u16(201);
    out.put_u16(1); // one header
    out.put_u16(name.len() as u16);
    out.put_slice(name);
    out.put_u32(value.len() as u32);
    out.put_slice(value);
    // A body that differs per key, like real responses (nothing deduplicates it).
    let stamp = n.to_be_bytes();
    out.extend((0..BODY_BYTES).map(|i| stamp[i % 8] ^ (i as u8)));
    out.freeze()
}

pub fn record_id(n: u64) -> RecordId {
    let key = IdempotencyKey::parse(format!("key-{n:012}").as_bytes()).expect("a valid key");
    RecordId::new(b"user-1", &key)
}

pub fn fingerprint(n: u64) -> Fingerprint {
    let mut bytes = [0; Fingerprint::LEN];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..].copy_from_slice(&(!n).to_le_bytes());
    Fingerprint::from_bytes(bytes)
}

/// Claims and completes key `n`, as the layer does for a first request.
pub async fn store_one<St: IdempotencyStore>(store: &St, n: u64) -> anyhow::Result<()> {
    let id = record_id(n);
    let Claim::Acquired(token) = store.claim(&id, &fingerprint(n), LEASE).await? else {
        bail!("key {n} was not free");
    };
    store.complete(&id, token, encoded_response(n), TTL).await?;
    Ok(())
}

/// Resident set size of this process, from /proc/self/status.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// `memory-child`: fills one in-memory store in this (fresh) process and prints the cost.
pub fn child(store: ChildStore, keys: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let rss_before = rss_bytes()?;
        let payload_bytes;
        let rss_after;
        match store {
            ChildStore::Ours => {
                // A budget that holds every key: this measures the cost, not eviction.
                let store = tower_idempotency::store::memory::MemoryStore::builder()
                    .max_entries(keys as usize * 2)
                    .max_bytes(usize::MAX / 2)
                    .build();
                for n in 0..keys {
                    store_one(&store, n).await?;
                }
                anyhow::ensure!(store.len() as u64 == keys, "the store lost keys");
                payload_bytes = (RecordId::LEN + encoded_response(0).len()) as u64;
                rss_after = rss_bytes()?;
                drop(store);
            }
            ChildStore::Idempotent => {
                let store = idempotent::memory::MemoryStore::builder().try_build()?;
                let mut payload = 0;
                for n in 0..keys {
                    payload = fill_idempotent(&store, n).await?;
                }
                anyhow::ensure!(store.len().await? as u64 == keys, "the store lost keys");
                payload_bytes = payload;
                rss_after = rss_bytes()?;
            }
        }
        anyhow::Ok(ChildReport {
            keys,
            payload_bytes,
            rss_before,
            rss_after,
        })
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Stores key `n` through `idempotent`'s claim API, as its middleware does; returns the
/// payload (stored key, header, body).
async fn fill_idempotent<S: idempotent::IdempotencyStore>(
    store: &S,
    n: u64,
) -> anyhow::Result<u64> {
    let key = peer_key(n)?;
    let body = encoded_response(n).slice(6 + 6 + 28..);
    let claim = store
        .claim(&key, LEASE)
        .fingerprint("POST /api/deployments", &n.to_le_bytes())
        .try_insert()
        .await?;
    let idempotent::ClaimOutcome::Claimed(guard) = claim else {
        bail!("key {n} was not free");
    };
    let metadata: idempotent::Metadata = [(
        "content-type".to_owned(),
        Bytes::from_static(b"application/json"),
    )]
    .into_iter()
    .collect();
    let payload = (key.as_str().len() + 28 + body.len()) as u64;
    guard
        .complete(idempotent::CachedResponse::new(201, metadata, body), TTL)
        .await?;
    Ok(payload)
}

/// The key `idempotent`'s middleware stores for key `n` of a scoped request.
fn peer_key(n: u64) -> anyhow::Result<idempotent::IdempotencyKey> {
    let client_key = idempotent::IdempotencyKey::new(format!("key-{n:012}"))?;
    Ok(idempotent::middleware::stored_key("user-1", &client_key)?)
}

fn run_child(store: ChildStore, keys: u64) -> anyhow::Result<ChildReport> {
    let store_arg = match store {
        ChildStore::Ours => "ours",
        ChildStore::Idempotent => "idempotent",
    };
    let output = Command::new(std::env::current_exe()?)
        .args([
            "memory-child",
            "--store",
            store_arg,
            "--keys",
            &keys.to_string(),
        ])
        .output()?;
    if !output.status.success() {
        bail!(
            "memory-child --store {store_arg} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `memory`.
pub fn run(quick: bool, database_url: &str, results_dir: &Path) -> anyhow::Result<()> {
    let memory_keys = if quick { 100_000 } else { 1_000_000 };
    let backend_keys = if quick { 10_000 } else { 100_000 };
    let mut costs = Vec::new();
    let mut skipped = Vec::new();

    for (store, name) in [
        (ChildStore::Ours, "ours: MemoryStore"),
        (ChildStore::Idempotent, "idempotent: memory store"),
    ] {
        let report = run_child(store, memory_keys)?;
        let cost = KeyCost::new(
            name,
            "VmRSS growth / keys",
            report.keys,
            report.payload_bytes,
            report.rss_after.saturating_sub(report.rss_before),
        );
        costs.push(cost);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match redis_costs(backend_keys).await {
            Ok(mut c) => costs.append(&mut c),
            Err(e) => skipped.push(format!("Redis: {e:#}")),
        }
        match postgres_costs(database_url, backend_keys).await {
            Ok(mut c) => costs.append(&mut c),
            Err(e) => skipped.push(format!("PostgreSQL: {e:#}")),
        }
    });
    for c in &costs {
        eprintln!(
            "memory: {:<26} {:<62} {:>6.0} B/key, {:>5.0} B beyond the payload",
            c.store, c.method, c.bytes_per_key, c.overhead_per_key
        );
    }
    for s in &skipped {
        eprintln!("memory: skipped {s}");
    }
    results::save(
        &results_dir.join("memory.json"),
        &MemoryResults {
            command: results::command_line(),
            response_body_bytes: BODY_BYTES,
            costs,
            skipped,
        },
    )
}

async fn used_memory(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("no used_memory in INFO")?
        .trim()
        .parse()
        .context("used_memory")
}

/// Stores keys `0..keys` with a few concurrent writers.
async fn fill<St, F, Fut>(keys: u64, store: St, one: F) -> anyhow::Result<()>
where
    St: Clone + Send + 'static,
    F: Fn(St, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut tasks = JoinSet::new();
    for writer in 0..WRITERS {
        let (store, one) = (store.clone(), one.clone());
        tasks.spawn(async move {
            let mut n = writer;
            while n < keys {
                one(store.clone(), n).await?;
                n += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn redis_costs(keys: u64) -> anyhow::Result<Vec<KeyCost>> {
    let server = PrivateRedis::start().await?;
    let mut con = services::redis(&server.url).await?;
    let mut costs = Vec::new();
    let sample = keys.min(1000);
    let sampled_keys = (0..sample).map(|n| n * (keys / sample));

    // Ours.
    let store = tower_idempotency_redis::RedisStore::connect(&server.url).await?;
    let before = used_memory(&mut con).await?;
    fill(
        keys,
        store.clone(),
        |s, n| async move { store_one(&s, n).await },
    )
    .await?;
    let after = used_memory(&mut con).await?;
    let key_len = store.key(&record_id(0)).len() as u64;
    // The value: state byte, fingerprint, token (25 bytes), then the encoded response.
    let value_len = 25 + encoded_response(0).len() as u64;
    let sampled = memory_usage(
        &mut con,
        sampled_keys.clone().map(|n| store.key(&record_id(n))),
    )
    .await?;
    costs.push(KeyCost::new(
        "ours: RedisStore",
        &format!("MEMORY USAGE, mean of {sample} keys"),
        sample,
        key_len + value_len,
        sampled,
    ));
    costs.push(KeyCost::new(
        "ours: RedisStore",
        "used_memory growth / keys",
        keys,
        key_len + value_len,
        after.saturating_sub(before),
    ));
    redis::cmd("FLUSHALL").query_async::<()>(&mut con).await?;

    // idempotent's Valkey store, for comparison.
    let peer = idempotent::valkey::ValkeyStore::with_url(server.url.clone())
        .prefix("idempotency")
        .try_build()
        .await?;
    let before = used_memory(&mut con).await?;
    fill(keys, peer, |s, n| async move {
        fill_idempotent(&s, n).await.map(drop)
    })
    .await?;
    let after = used_memory(&mut con).await?;
    let redis_key =
        |n: u64| -> anyhow::Result<String> { Ok(format!("idempotency:{}", peer_key(n)?)) };
    // A hash: status, run id, token, fingerprint, and the serialized entry with the response.
    let mut value_len = 0u64;
    for field in ["status", "run_id", "ft", "fp", "data"] {
        let len: u64 = redis::cmd("HSTRLEN")
            .arg(redis_key(0)?)
            .arg(field)
            .query_async(&mut con)
            .await?;
        value_len += field.len() as u64 + len;
    }
    let payload = redis_key(0)?.len() as u64 + value_len;
    let peer_keys = sampled_keys
        .map(redis_key)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sampled = memory_usage(&mut con, peer_keys.into_iter()).await?;
    costs.push(KeyCost::new(
        "idempotent: Valkey store",
        &format!("MEMORY USAGE, mean of {sample} keys"),
        sample,
        payload,
        sampled,
    ));
    costs.push(KeyCost::new(
        "idempotent: Valkey store",
        "used_memory growth / keys",
        keys,
        payload,
        after.saturating_sub(before),
    ));
    Ok(costs)
}

/// The sum of `MEMORY USAGE` (all of a value's elements counted) over `keys`.
async fn memory_usage(
    con: &mut redis::aio::MultiplexedConnection,
    keys: impl Iterator<Item = String>,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for key in keys {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(con)
            .await?;
        total += usage.with_context(|| format!("{key} is missing"))?;
    }
    Ok(total)
}

async fn postgres_costs(database_url: &str, keys: u64) -> anyhow::Result<Vec<KeyCost>> {
    let table = format!("loadbench_memory_{}", std::process::id());
    let store = tower_idempotency_postgres::PostgresStore::builder()
        .table(&table)
        .connect(database_url)
        .await?;
    store.migrate().await?;
    let outcome = async {
        fill(
            keys,
            store.clone(),
            |s, n| async move { store_one(&s, n).await },
        )
        .await?;
        let pool = store.pool();
        let size = async || -> anyhow::Result<u64> {
            let bytes: i64 =
                sqlx::query_scalar(&format!("SELECT pg_total_relation_size('\"{table}\"')"))
                    .fetch_one(pool)
                    .await?;
            Ok(bytes as u64)
        };
        let payload = (RecordId::LEN + encoded_response(0).len()) as u64;
        let written = size().await?;
        sqlx::query(&format!("VACUUM FULL \"{table}\""))
            .execute(pool)
            .await?;
        let compacted = size().await?;
        anyhow::Ok(vec![
            KeyCost::new(
                "ours: PostgresStore",
                "pg_total_relation_size / rows, as written (claim + complete)",
                keys,
                payload,
                written,
            ),
            KeyCost::new(
                "ours: PostgresStore",
                "pg_total_relation_size / rows, after VACUUM FULL",
                keys,
                payload,
                compacted,
            ),
        ])
    }
    .await;
    let dropped = sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(store.pool())
        .await;
    let costs = outcome?;
    dropped?;
    Ok(costs)
}
