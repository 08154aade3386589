//! `backend token create | list | revoke`: API tokens, straight on the database.

use std::time::Duration;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    auth::{create_token_with, validate_user_id},
    db::{Db, tokens::TokenInfo},
};

/// `backend token create`: the token alone on stdout (so `TOKEN=$(backend token create
/// alice)` works), its id and how to revoke it on stderr.
pub async fn create(
    db: &Db,
    user: &str,
    name: Option<&str>,
    expires_in: Option<Duration>,
) -> anyhow::Result<()> {
    let created = create_token_with(db, user, name, expires_in).await?;
    println!("{}", created.token);
    let expiry = match expires_in {
        Some(d) => format!("it expires in {}", humantime::format_duration(d)),
        None => "it does not expire".to_owned(),
    };
    eprintln!(
        "Created API token {} for user `{user}`; {expiry}. It is shown only once; store it now. \
         Revoke it with `backend token revoke {}`.",
        created.id, created.id
    );
    Ok(())
}

/// `backend token list [USER]`: one line per token, tab-separated under a header; never the
/// token nor its hash.
pub async fn list(db: &Db, user: Option<&str>) -> anyhow::Result<()> {
    if let Some(user) = user {
        validate_user_id(user)?;
    }
    let tokens = db.tokens().list(user).await?;
    println!("ID\tUSER\tNAME\tCREATED\tLAST USED\tEXPIRES\tSTATUS");
    let at = crate::db::now();
    for token in &tokens {
        println!("{}", line(token, at));
    }
    Ok(())
}

fn line(token: &TokenInfo, at: OffsetDateTime) -> String {
    let time = |t: Option<OffsetDateTime>| {
        t.and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".to_owned())
    };
    let status = match (token.revoked_at, token.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(expires)) if expires <= at => "expired",
        _ => "active",
    };
    [
        token.id.clone(),
        token.user_id.clone(),
        token.name.clone().unwrap_or_else(|| "-".to_owned()),
        time(Some(token.created_at)),
        time(token.last_used_at),
        time(token.expires_at),
        status.to_owned(),
    ]
    .join("\t")
}

/// `backend token revoke ID`: the token gets 401 from now on.
pub async fn revoke(db: &Db, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        db.tokens().revoke(id).await?,
        "no token has the id `{id}` (see `backend token list`)"
    );
    eprintln!("Revoked API token {id}.");
    Ok(())
}
