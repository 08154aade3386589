//! The `api_tokens` table: SHA-256 hashes of bearer tokens, the user each one belongs to, and
//! its public id, name, expiry, revocation and last use. The hash never leaves this module
//! except to be compared: listings carry everything but it.

use time::OffsetDateTime;

use super::{Db, now};

/// A token to store (its hash, never the token).
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub token_hash: &'a str,
    pub user_id: &'a str,
    pub name: Option<&'a str>,
    pub expires_at: Option<OffsetDateTime>,
}

/// What authentication needs of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuth {
    pub id: String,
    pub user_id: String,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl_from_row!(TokenAuth {
    id: String,
    user_id: String,
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
});

impl TokenAuth {
    /// Neither revoked nor expired at `at`.
    pub fn is_usable(&self, at: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| at < expires)
    }
}

/// One row of `backend token list`: no token, no hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl_from_row!(TokenInfo {
    id: String,
    user_id: String,
    name: Option<String>,
    created_at: OffsetDateTime,
    last_used_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
});

const INFO_COLUMNS: &str =
    "id, user_id, name, created_at, last_used_at, expires_at, revoked_at FROM api_tokens";

/// Queries on `api_tokens`.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    db: &'a Db,
}

impl<'a> Tokens<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self { db }
    }

    /// Stores `token`.
    pub async fn insert(&self, token: &NewToken<'_>) -> Result<(), sqlx::Error> {
        let created_at = now();
        macro_rules! insert {
            ($pool:expr, $sql:literal) => {
                sqlx::query($sql)
                    .bind(token.id)
                    .bind(token.token_hash)
                    .bind(token.user_id)
                    .bind(token.name)
                    .bind(created_at)
                    .bind(token.expires_at)
                    .execute($pool)
                    .await
                    .map(drop)
            };
        }
        match self.db {
            Db::Sqlite(pool) => insert!(
                pool,
                "INSERT INTO api_tokens (id, token_hash, user_id, name, created_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ),
            Db::Postgres(pool) => insert!(
                pool,
                "INSERT INTO api_tokens (id, token_hash, user_id, name, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
        }
    }

    /// The token hashing to `token_hash` (lower-case hex), usable or not.
    pub async fn find(&self, token_hash: &str) -> Result<Option<TokenAuth>, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT id, user_id, expires_at, revoked_at FROM api_tokens \
                     WHERE token_hash = ?",
                )
                .bind(token_hash)
                .fetch_optional(pool)
                .await
            }
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT id, user_id, expires_at, revoked_at FROM api_tokens \
                     WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(pool)
                .await
            }
        }
    }

    /// The user of the usable token hashing to `token_hash`.
    pub async fn find_user(&self, token_hash: &str) -> Result<Option<String>, sqlx::Error> {
        let token = self.find(token_hash).await?;
        Ok(token
            .filter(|token| token.is_usable(now()))
            .map(|token| token.user_id))
    }

    /// Every token (of `user_id`, if given), oldest first.
    pub async fn list(&self, user_id: Option<&str>) -> Result<Vec<TokenInfo>, sqlx::Error> {
        match (self.db, user_id) {
            (Db::Sqlite(pool), None) => {
                sqlx::query_as(&format!("SELECT {INFO_COLUMNS} ORDER BY created_at, id"))
                    .fetch_all(pool)
                    .await
            }
            (Db::Sqlite(pool), Some(user)) => {
                sqlx::query_as(&format!(
                    "SELECT {INFO_COLUMNS} WHERE user_id = ? ORDER BY created_at, id"
                ))
                .bind(user)
                .fetch_all(pool)
                .await
            }
            (Db::Postgres(pool), None) => {
                sqlx::query_as(&format!("SELECT {INFO_COLUMNS} ORDER BY created_at, id"))
                    .fetch_all(pool)
                    .await
            }
            (Db::Postgres(pool), Some(user)) => {
                sqlx::query_as(&format!(
                    "SELECT {INFO_COLUMNS} WHERE user_id = $1 ORDER BY created_at, id"
                ))
                .bind(user)
                .fetch_all(pool)
                .await
            }
        }
    }

    /// Revokes the token `id` (a revoked one keeps its first revocation time). False when no
    /// token has this id.
    pub async fn revoke(&self, id: &str) -> Result<bool, sqlx::Error> {
        let at = now();
        let result = match self.db {
            Db::Sqlite(pool) => sqlx::query(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            )
            .bind(at)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
            )
            .bind(at)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(result > 0)
    }

    /// Records that the token `id` was used at `at`.
    pub async fn touch(&self, id: &str, at: OffsetDateTime) -> Result<(), sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await
                .map(drop),
            Db::Postgres(pool) => {
                sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(pool)
                    .await
                    .map(drop)
            }
        }
    }
}
