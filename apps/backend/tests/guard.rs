//! The database guard without a unique constraint: race-free across instances within the
//! TTL, and the migration that replaced the constraint, on a database created before it.

#[macro_use]
mod common;

use std::{sync::Arc, time::Duration};

use backend::{
    Db,
    db::deployments::{Inserted, NewDeployment},
};
use common::{Backend, BlankDb, Executions, TestDb, TestServer, deployment, token};
use reqwest::StatusCode;
use sqlx::{Connection as _, PgConnection, SqliteConnection, migrate::Migrator};
use tokio::{sync::Barrier, task::JoinSet};

backend_tests!(
    two_instances_without_a_shared_store_create_one_deployment_per_key,
    a_database_from_before_the_migration_keeps_its_rows,
);

/// Two instances with memory stores of their own (neither knows the other's keys) on one
/// database, the same key sent to both at once, round after round: each instance runs its
/// handler, and the guard (serialized per (user, key) in the inserting transaction) lets
/// exactly one of them insert; the other answers with that deployment.
async fn two_instances_without_a_shared_store_create_one_deployment_per_key(backend: Backend) {
    const ROUNDS: usize = 15;
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let a = TestServer::spawn(&t).await;
    let b = TestServer::spawn(&t).await;
    for round in 0..ROUNDS {
        let key = format!("both-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = JoinSet::new();
        for server in [&a, &b] {
            let request = reqwest::Client::new()
                .post(server.url("/api/deployments"))
                .bearer_auth(&alice)
                .header("idempotency-key", &key)
                .json(&deployment("twice"));
            let barrier = Arc::clone(&barrier);
            tasks.spawn(async move {
                barrier.wait().await;
                let response = request.send().await.unwrap();
                let status = response.status();
                let replayed = response.headers().contains_key("idempotent-replayed");
                (status, replayed, response.text().await.unwrap())
            });
        }
        let answers = tasks.join_all().await;
        for (status, _, body) in &answers {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
        }
        assert_eq!(
            answers[0].2, answers[1].2,
            "one deployment, the same answer"
        );
        assert_eq!(
            answers.iter().filter(|(_, replayed, _)| !replayed).count(),
            1,
            "one original answer, one guard replay"
        );
        assert_eq!(
            common::deployments_with_key(&t.db, "alice", &key).await,
            1,
            "round {round}"
        );
    }
    // Every request ran its handler (each store saw its key once); half were guard hits.
    let total = a.executions().await + b.executions().await;
    assert_eq!(
        total,
        Executions {
            handler: 2 * ROUNDS as u64,
            layer: 2 * ROUNDS as u64,
            guard_hits: ROUNDS as u64,
        }
    );
    a.stop().await;
    b.stop().await;
}

/// A directory holding only the first migration of `dialect`: the schema of the releases
/// with the unique (user, key) constraint.
fn first_migration_only(dialect: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let name = "20261128000001_init.sql";
    let source = format!("{}/migrations/{dialect}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(&source, dir.path().join(name)).unwrap();
    dir
}

async fn a_database_from_before_the_migration_keeps_its_rows(backend: Backend) {
    let blank = BlankDb::new(backend).await;
    // The old schema, and three deployments of the old release, the last one deleted (a seq
    // is never handed out twice).
    let insert = |seq: i64| {
        format!(
            "INSERT INTO deployments (id, user_id, idempotency_key, project, environment, \
             git_ref, description, status, created_at) VALUES ('old-{seq}', 'alice', \
             'legacy-{seq}', 'api', 'production', 'v1', NULL, 'queued', \
             '2020-01-01T10:00:00.000Z');"
        )
    };
    let old_rows = format!("{}{}{}", insert(1), insert(2), insert(3));
    match backend {
        Backend::Sqlite => {
            let options = blank
                .url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
            let dir = first_migration_only("sqlite");
            Migrator::new(dir.path())
                .await
                .unwrap()
                .run(&mut conn)
                .await
                .unwrap();
            sqlx::raw_sql(&old_rows).execute(&mut conn).await.unwrap();
            sqlx::raw_sql("DELETE FROM deployments WHERE id = 'old-3'")
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&blank.url).await.unwrap();
            let dir = first_migration_only("postgres");
            Migrator::new(dir.path())
                .await
                .unwrap()
                .run(&mut conn)
                .await
                .unwrap();
            sqlx::raw_sql(&old_rows).execute(&mut conn).await.unwrap();
            sqlx::raw_sql("DELETE FROM deployments WHERE id = 'old-3'")
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }

    // This release's start: the remaining migrations.
    let db = Db::connect(&blank.url)
        .await
        .expect("migrate the old database");
    let rows = db.deployments().list("alice", None, 10).await.unwrap();
    let kept: Vec<(i64, &str)> = rows.iter().map(|r| (r.seq, r.id.as_str())).collect();
    assert_eq!(kept, [(2, "old-2"), (1, "old-1")]);
    assert_eq!(rows[1].idempotency_key.as_deref(), Some("legacy-1"));

    // The old key, older than the window: a new deployment, not a conflict; newer seqs.
    let new = |id: &'static str| NewDeployment {
        id,
        user_id: "alice",
        idempotency_key: Some("legacy-1"),
        project: "api",
        environment: "production",
        git_ref: "v2",
        description: None,
        status: "queued",
        created_at: backend::db::now(),
    };
    let window = Duration::from_secs(3600);
    let Inserted::Created(created) = db
        .deployments()
        .insert(&new("new-1"), window)
        .await
        .unwrap()
    else {
        panic!("the old deployment is outside the window");
    };
    assert!(created.seq > 3, "seq {} was handed out before", created.seq);
    // Within the window, the guard answers with the newest deployment of the key.
    let again = db
        .deployments()
        .insert(&new("new-2"), window)
        .await
        .unwrap();
    assert_eq!(again, Inserted::Existing(created.clone()));
    let newest = db
        .deployments()
        .find_by_key("alice", "legacy-1")
        .await
        .unwrap();
    assert_eq!(newest, Some(created));
    db.close().await;
}
