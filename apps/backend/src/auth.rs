//! Bearer-token authentication.
//!
//! Tokens are 256 random bits, shown once when minted (`backend token create <user>`); the
//! database keeps only their SHA-256. A token is high-entropy, so a plain (unsalted) hash is
//! enough, and it lets a request find its token with one indexed lookup.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::{app::AppState, db::Db, error::AppError};

/// Prefix of every token, so leaked tokens are recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "bk_";

/// The authenticated caller, put into the request extensions by [`require_auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The user id the token was minted for.
    pub id: String,
}

/// Rejects requests without a valid bearer token (401, `WWW-Authenticate: Bearer`) and
/// hands the others on with an [`AuthUser`].
pub async fn require_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let token = bearer_token(&request)?;
    let user_id = state
        .db
        .tokens()
        .find_user(&hash_token(token))
        .await?
        .ok_or(AppError::InvalidToken)?;
    request.extensions_mut().insert(AuthUser { id: user_id });
    Ok(next.run(request).await)
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
    validate_user_id(user_id)?;
    let token = generate_token()?;
    db.tokens().insert(&hash_token(&token), user_id).await?;
    Ok(token)
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
