//! The report's "Transactional mode" section: transactional mode against the separate stores
//! doing the same work (one `orders` row per execution), from the same results as the rest.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Summary, ms, optional, ratio, summarize, thousands};
use crate::{
    config::Config,
    load::Scenario,
    results::{LoadResults, RoundTripResults, RoundTrips},
    roundtrips::{FIRST, IN_FLIGHT, POSTGRES, POSTGRES_TX, REPLAY, SQLITE, SQLITE_TX},
};

/// The configurations compared, separate store first.
const CONFIGS: [Config; 4] = [
    Config::OursPostgres,
    Config::OursPostgresTx,
    Config::OursSqlite,
    Config::OursSqliteTx,
];

/// Throughput ratios: (numerator, denominator).
const PAIRS: [(Config, Config); 3] = [
    (Config::OursPostgresTx, Config::OursPostgres),
    (Config::OursSqliteTx, Config::OursPostgres),
    (Config::OursSqliteTx, Config::OursSqlite),
];

/// The stores of `roundtrips`, as its rows name them.
const STORES: [&str; 4] = [POSTGRES, POSTGRES_TX, SQLITE, SQLITE_TX];

pub(super) fn section(md: &mut String, load: &LoadResults, roundtrips: Option<&RoundTripResults>) {
    let measured_load = load
        .measurements
        .iter()
        .any(|m| matches!(m.config, Config::OursPostgresTx | Config::OursSqliteTx));
    let rows: Vec<&RoundTrips> = roundtrips
        .map(|r| {
            r.rows
                .iter()
                .filter(|row| STORES.contains(&row.store.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if !measured_load && rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Transactional mode\n");
    let _ = writeln!(
        md,
        "`IdempotencyLayer::transactional(store)` begins a transaction, claims the key in it, \
         lends it to the handler (`Lent<T>`) and commits the handler's writes together with the \
         idempotency record. Here it is compared with the separate stores doing the same work: \
         the handler inserts one `orders` row per execution, with `PostgresStore` and \
         `SqliteStore` as an autocommit statement of its own on the store's pool (between the \
         claim's commit and the completion's), in transactional mode through the lent \
         transaction (one commit with the record). PostgreSQL is the shared local server \
         ({}); SQLite a fresh database file per server process.\n",
        load.machine.postgres.as_deref().unwrap_or("not reachable")
    );
    summary(md, load, &rows);
    if let Some(roundtrips) = roundtrips.filter(|_| !rows.is_empty()) {
        cost(md, &rows);
        let _ = writeln!(md, "Command: `{}`\n", roundtrips.command);
    }
    if measured_load {
        throughput(md, load);
    }
}

/// The headline figures, read off the tables below.
fn summary(md: &mut String, load: &LoadResults, rows: &[&RoundTrips]) {
    let find = |store: &str, request: &str| {
        rows.iter()
            .find(|r| r.store == store && r.request == request)
            .copied()
    };
    let mut lines = Vec::new();
    for (separate, tx, db) in [
        (POSTGRES, POSTGRES_TX, "PostgreSQL"),
        (SQLITE, SQLITE_TX, "SQLite"),
    ] {
        let commits = |store, request| find(store, request).and_then(|r| r.commits);
        if let (Some(s), Some(t)) = (commits(separate, FIRST), commits(tx, FIRST)) {
            lines.push(format!(
                "{db}, commits per first request: **{t} in transactional mode, {s} with the \
                 separate store**; per replay: {} (separate: {}).",
                optional(commits(tx, REPLAY)),
                optional(commits(separate, REPLAY)),
            ));
        }
    }
    let scenario_rows = |scenario| summarize(load, scenario);
    for scenario in [Scenario::Unique, Scenario::Replay, Scenario::Retry50] {
        let rows = scenario_rows(scenario);
        let get = |c: Config| rows.iter().find(|r| r.config == c);
        let pairs: Vec<String> = PAIRS
            .iter()
            .filter_map(|&(a, b)| {
                let (x, y) = (get(a)?, get(b)?);
                Some(format!("{a} ÷ {b} {}", ratio(x.rps, y.rps)))
            })
            .collect();
        if !pairs.is_empty() {
            lines.push(format!("`{scenario}` req/s: {}.", pairs.join(", ")));
        }
    }
    for scenario in Scenario::ALL {
        for r in summarize(load, scenario) {
            if CONFIGS.contains(&r.config) {
                for failure in r.failures() {
                    lines.push(format!(
                        "**{} failed a check** in `{scenario}`: {failure} (see [Correctness](#correctness)).",
                        r.config
                    ));
                }
            }
        }
    }
    for line in &lines {
        let _ = writeln!(md, "- {line}");
    }
    if !lines.is_empty() {
        let _ = writeln!(md);
    }
}

/// Statements a row executed (SQLite: those sqlx logs).
fn statements(row: &RoundTrips) -> u64 {
    row.commands.iter().map(|(_, n)| n).sum()
}

/// PostgreSQL's rows only (the others have no WAL to read).
fn wal_records(row: &RoundTrips) -> Option<u64> {
    let postgres = row.commits.is_some() && row.client_writes.is_some();
    postgres.then(|| row.wal.iter().map(|(_, n)| n).sum())
}

fn cost(md: &mut String, rows: &[&RoundTrips]) {
    let find = |store: &str, request: &str| {
        rows.iter()
            .find(|r| r.store == store && r.request == request)
            .copied()
    };
    let _ = writeln!(md, "### Cost per request\n");
    let _ = writeln!(
        md,
        "From `roundtrips` (private PostgreSQL cluster, SQLite file; see [Store round trips \
         per request](#store-round-trips-per-request) for how each count is taken). *Commits*: \
         transactions that wrote and were made durable (each an fsync of the WAL on a server \
         with `fsync` on); *WAL records*: everything PostgreSQL logged for the request (rows, \
         index entries, commits); SQLite statements leave out `BEGIN`, `COMMIT` and \
         `ROLLBACK`. In transactional mode on PostgreSQL, `BEGIN` and its two `SET LOCAL`s \
         (the transaction's time limits) are three statements in one message; *round trips* \
         include sqlx's pings (a ping before each pool checkout, sqlx's default \
         `test_before_acquire`, and one when the connection goes back): per checkout, not per \
         statement.\n"
    );
    let _ = writeln!(
        md,
        "| request | per request | PostgresStore | PostgresTransactionalStore | PostgreSQL: tx ÷ separate | SqliteStore | SqliteTransactionalStore |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    type Metric = fn(&RoundTrips) -> Option<u64>;
    let metrics: [(&str, Metric); 5] = [
        ("statements", |r| Some(statements(r))),
        ("commits", |r| r.commits),
        ("WAL records", wal_records),
        ("round trips", |r| r.client_writes),
        ("of which sqlx pings", |r| r.pings),
    ];
    let requests = [
        (FIRST, "first request"),
        (REPLAY, "replay"),
        (IN_FLIGHT, "retry while in flight (409)"),
    ];
    for (request, label) in requests {
        for (metric, get) in metrics {
            let value = |store| find(store, request).and_then(get);
            let (separate, tx) = (value(POSTGRES), value(POSTGRES_TX));
            let tx_ratio = match (tx, separate) {
                (Some(t), Some(s)) if s > 0 => ratio(t as f64, s as f64),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {label} | {metric} | {} | {} | {tx_ratio} | {} | {} |",
                optional(separate),
                optional(tx),
                optional(value(SQLITE)),
                optional(value(SQLITE_TX)),
            );
        }
    }
    let _ = writeln!(md, "\nWhat ran, by statement:\n");
    let _ = writeln!(
        md,
        "| store | request | status | statements executed | WAL records |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---|");
    for row in rows {
        let list = |items: &[(String, u64)]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items
                    .iter()
                    .map(|(name, n)| format!("{name} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let wal = match wal_records(row) {
            Some(_) => list(&row.wal),
            None => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {wal} |",
            row.store,
            row.request,
            row.status,
            list(&row.commands)
        );
    }
    let _ = writeln!(md);
}

fn throughput(md: &mut String, load: &LoadResults) {
    let _ = writeln!(md, "### Throughput\n");
    let _ = writeln!(
        md,
        "From the load run above (`{}`): the same scenarios, connections and rounds as every \
         other configuration, interleaved with them; medians over rounds.\n",
        load.command
    );
    let _ = writeln!(
        md,
        "| scenario | configuration | req/s | p50 | p99 | replayed | 409 | other / errors | handler runs / new keys | correct |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let scenarios: Vec<(Scenario, Vec<Summary<'_>>)> = Scenario::ALL
        .into_iter()
        .map(|s| {
            let rows = summarize(load, s)
                .into_iter()
                .filter(|r| CONFIGS.contains(&r.config))
                .collect::<Vec<_>>();
            (s, rows)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    for (scenario, rows) in &scenarios {
        for r in rows {
            let requests = r.sum(|m| m.requests).max(1);
            let runs = if *scenario == Scenario::SameKey64 {
                let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
                for m in &r.rounds {
                    for &n in &m.executions_per_key {
                        *histogram.entry(n).or_default() += 1;
                    }
                }
                histogram
                    .iter()
                    .map(|(runs, keys)| format!("{runs}× for {keys} keys"))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                format!(
                    "{} / {}",
                    thousands(r.sum(|m| m.executions) as f64),
                    thousands(r.sum(|m| m.new_keys) as f64)
                )
            };
            let _ = writeln!(
                md,
                "| `{scenario}` | {} | {} | {} | {} | {:.0}% | {} | {} / {} | {runs} | {} |",
                r.config,
                thousands(r.rps),
                ms(r.p50_us),
                ms(r.p99_us),
                100.0 * r.sum(|m| m.replayed) as f64 / requests as f64,
                r.sum(|m| m.conflict),
                r.sum(|m| m.other_status),
                r.sum(|m| m.transport_errors),
                if r.failures().is_empty() {
                    "yes"
                } else {
                    "**FAILURE**"
                }
            );
        }
    }
    let _ = writeln!(
        md,
        "\nRatios (req/s above 1: the first serves more; p99 below 1: the first answers \
         faster):\n"
    );
    let mut header = "| scenario |".to_owned();
    let mut rule = "|---|".to_owned();
    for (a, b) in PAIRS {
        let _ = write!(header, " {a} ÷ {b}: req/s | p99 |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for (scenario, rows) in &scenarios {
        if *scenario == Scenario::SameKey64 {
            continue; // a fixed number of requests, not a throughput
        }
        let get = |c: Config| rows.iter().find(|r| r.config == c);
        let mut line = format!("| `{scenario}` |");
        for (a, b) in PAIRS {
            match (get(a), get(b)) {
                (Some(a), Some(b)) => {
                    let _ = write!(
                        line,
                        " {} | {} |",
                        ratio(a.rps, b.rps),
                        ratio(a.p99_us, b.p99_us)
                    );
                }
                _ => line.push_str(" – | – |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
}
