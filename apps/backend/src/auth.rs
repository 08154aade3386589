//! Bearer-token authentication.
//!
//! Tokens are 256 random bits, shown once when minted (`backend token create <user>`); the
//! database keeps only their SHA-256. A token is high-entropy, so a plain (unsalted) hash is
//! enough, and it lets a request find its token with one indexed lookup. Each token also has
//! a random public id (for listing and revoking), an optional expiry and a revocation time;
//! revoked and expired tokens are refused like unknown ones. Invalid tokens count against
//! their client address's failure limit ([`crate::ratelimit`]), checked before any lookup.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::{
    app::AppState,
    db::{
        Db, now,
        tokens::{NewToken, TokenAuth},
    },
    error::AppError,
    ratelimit::{self, RateLimitConfig, RateLimits},
};

/// How often at most a token's `last_used_at` is written: a write per request would cost
/// more than authentication itself.
pub const LAST_USED_PERIOD: Duration = Duration::from_secs(60);

/// Authentication's per-process state.
#[derive(Debug, Default)]
pub struct AuthState {
    pub(crate) last_used: LastUsed,
    pub(crate) limits: RateLimits,
}

impl AppState {
    /// Replaces the rate limits (none by default; `backend serve` sets its flags').
    pub fn with_rate_limits(mut self, config: RateLimitConfig) -> Self {
        self.auth = Arc::new(AuthState {
            last_used: LastUsed::default(),
            limits: RateLimits::new(config),
        });
        self
    }
}

/// When each token's last use was last written, to write it at most once per
/// [`LAST_USED_PERIOD`].
#[derive(Debug, Default)]
pub(crate) struct LastUsed(Mutex<HashMap<String, Instant>>);

impl LastUsed {
    /// Most tokens remembered; past it the memory starts over (a write each, once).
    const MAX_TOKENS: usize = 100_000;

    /// Whether the use of token `id` now is to be written, and if so notes it.
    fn due(&self, id: &str) -> bool {
        let mut written = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match written.get(id) {
            Some(at) if now.duration_since(*at) < LAST_USED_PERIOD => false,
            _ => {
                if written.len() >= Self::MAX_TOKENS {
                    written.clear();
                }
                written.insert(id.to_owned(), now);
                true
            }
        }
    }
}

/// Prefix of every token, so leaked tokens are recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "bk_";

/// The authenticated caller, put into the request extensions by [`require_auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The user id the token was minted for.
    pub id: String,
}

/// Rejects requests without a valid bearer token (401, `WWW-Authenticate: Bearer`), or with a
/// revoked or expired one, and hands the others on with an [`AuthUser`].
pub async fn require_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let limits = &state.auth.limits;
    // Without a peer address (an app served without `ConnectInfo`), no failure limit.
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(wait) = address.and_then(|a| limits.blocked(a)) {
        return Ok(ratelimit::too_many_auth_failures(wait));
    }
    let presented = bearer_token(&request).map(hash_token);
    let token = match authenticate(&state, presented).await {
        Ok(token) => token,
        // Presented and wrong: what guessing looks like (a missing token costs no lookup).
        Err(error @ AppError::InvalidToken) => {
            return Ok(match address.and_then(|a| limits.failed(a)) {
                Some(wait) => ratelimit::too_many_auth_failures(wait),
                None => error.into_response(),
            });
        }
        Err(error) => return Err(error),
    };
    if let Some(wait) = limits.token_request(&token.id) {
        return Ok(ratelimit::too_many_requests(wait));
    }
    let at = now();
    if state.auth.last_used.due(&token.id) {
        // Detached and best effort: a request never waits for, nor fails on, this write.
        let db = state.db.clone();
        tokio::spawn(async move {
            if let Err(error) = db.tokens().touch(&token.id, at).await {
                tracing::warn!(%error, token = %token.id, "cannot record a token's last use");
            }
        });
    }
    request.extensions_mut().insert(AuthUser {
        id: token.user_id.clone(),
    });
    Ok(next.run(request).await)
}

/// The usable token whose hash the request carries.
async fn authenticate(
    state: &AppState,
    token_hash: Result<String, AppError>,
) -> Result<TokenAuth, AppError> {
    let found = state.db.tokens().find(&token_hash?).await?;
    found
        .filter(|token| token.is_usable(now()))
        .ok_or(AppError::InvalidToken)
}

fn bearer_token(request: &Request) -> Result<&str, AppError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AppError::MissingToken)?;
    if values.next().is_some() {
        return Err(AppError::InvalidToken);
    }
    let value = value.to_str().map_err(|_| AppError::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(AppError::InvalidToken)?;
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 512 {
        return Err(AppError::InvalidToken);
    }
    Ok(token)
}

/// Lower-case hex SHA-256 of `token`: what the database stores.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh token: [`TOKEN_PREFIX`] and 256 random bits, base64url.
pub fn generate_token() -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)))
}

/// Mints a token for `user_id`, stores its hash, and returns the token (the only time it
/// exists in clear).
pub async fn create_token(db: &Db, user_id: &str) -> anyhow::Result<String> {
    Ok(create_token_with(db, user_id, None, None).await?.token)
}

/// A token just minted: the secret (shown once) and its public id.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub id: String,
    pub token: String,
}

/// Mints a token for `user_id`, named `name`, valid for `expires_in` (forever if `None`).
pub async fn create_token_with(
    db: &Db,
    user_id: &str,
    name: Option<&str>,
    expires_in: Option<Duration>,
) -> anyhow::Result<CreatedToken> {
    validate_user_id(user_id)?;
    if let Some(name) = name {
        anyhow::ensure!(
            (1..=255).contains(&name.len()) && !name.chars().any(char::is_control),
            "a token name must be 1-255 bytes without control characters"
        );
    }
    let expires_at = expires_in
        .map(|d| {
            time::Duration::try_from(d)
                .ok()
                .and_then(|d| now().checked_add(d))
                .ok_or_else(|| anyhow::anyhow!("--expires-in is too long"))
        })
        .transpose()?;
    let token = generate_token()?;
    let id = generate_token_id()?;
    db.tokens()
        .insert(&NewToken {
            id: &id,
            token_hash: &hash_token(&token),
            user_id,
            name,
            expires_at,
        })
        .await?;
    Ok(CreatedToken { id, token })
}

/// A token's public id: `tok_` and 128 random bits, drawn independently of the token, so
/// neither can be derived from the other.
fn generate_token_id() -> anyhow::Result<String> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    Ok(format!(
        "tok_{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// User ids are opaque, but must be printable and bounded: they end up in logs and scopes.
pub fn validate_user_id(user_id: &str) -> anyhow::Result<()> {
    let valid = !user_id.is_empty()
        && user_id.len() <= 255
        && user_id
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace());
    anyhow::ensure!(
        valid,
        "a user id must be 1-255 bytes without whitespace or control characters"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_prefixed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn user_ids() {
        assert!(validate_user_id("alice").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("a b").is_err());
    }
}
