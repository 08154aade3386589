//! The `api_tokens` table: SHA-256 hashes of bearer tokens and the user each one belongs to.

use super::{Db, now};

/// Queries on `api_tokens`.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    db: &'a Db,
}

impl<'a> Tokens<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self { db }
    }

    /// Records that the token hashing to `token_hash` (lower-case hex) belongs to `user_id`.
    pub async fn insert(&self, token_hash: &str, user_id: &str) -> Result<(), sqlx::Error> {
        let created_at = now();
        match self.db {
            Db::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES (?, ?, ?)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(created_at)
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES ($1, $2, $3)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(created_at)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The user whose token hashes to `token_hash`.
    pub async fn find_user(&self, token_hash: &str) -> Result<Option<String>, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar("SELECT user_id FROM api_tokens WHERE token_hash = ?")
                    .bind(token_hash)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT user_id FROM api_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(pool)
                    .await
            }
        }
    }
}
