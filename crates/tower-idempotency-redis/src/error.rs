//! Redis errors as [`StoreError`]s: what is an outage, what is a full server, what is a
//! misconfiguration.

use std::{error::Error as _, future::Future, io, time::Duration};

use redis::{ErrorKind as Kind, RedisError, ServerErrorKind as Server};
use tower_idempotency::store::{StoreError, StoreErrorKind};

/// Awaits `future` for at most `deadline`, mapping its error.
pub(crate) async fn within<T>(
    deadline: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(map_error(error)),
        Err(_) => Err(StoreError::unavailable(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("Redis did not answer within {deadline:?}"),
        ))),
    }
}

/// The store's kind of a Redis error.
///
/// - [`Unavailable`](StoreErrorKind::Unavailable): the server cannot be reached, did not answer
///   in time, or says it cannot serve right now (loading, cluster down or failing over, a
///   write that reached a demoted primary). These pass by themselves.
/// - [`CapacityExhausted`](StoreErrorKind::CapacityExhausted): `OOM`, Redis is at its
///   `maxmemory` and may not evict (`noeviction`).
/// - [`Corrupt`](StoreErrorKind::Corrupt): a key under the prefix holds another type.
/// - [`Backend`](StoreErrorKind::Backend): everything that does not pass by itself: a wrong
///   password or missing permissions, a TLS certificate that is not trusted, a server too old
///   for the commands (Redis < 7), an invalid URL.
pub(crate) fn kind_of(error: &RedisError) -> StoreErrorKind {
    match error.kind() {
        Kind::Io if is_tls_failure(error) => StoreErrorKind::Backend,
        Kind::Io | Kind::ClusterConnectionNotFound => StoreErrorKind::Unavailable,
        Kind::Server(
            Server::BusyLoading
            | Server::TryAgain
            | Server::ClusterDown
            | Server::MasterDown
            | Server::ReadOnly,
        ) => StoreErrorKind::Unavailable,
        _ => match error.code() {
            Some("OOM") => StoreErrorKind::CapacityExhausted,
            // A key under the prefix that holds a hash, a list, ...
            Some("WRONGTYPE") => StoreErrorKind::Corrupt,
            // A script killed or a server busy running one: it passes.
            Some("BUSY") => StoreErrorKind::Unavailable,
            _ => StoreErrorKind::Backend,
        },
    }
}

/// Maps a Redis error to the store's error kinds, keeping it as the source.
pub(crate) fn map_error(error: RedisError) -> StoreError {
    let kind = kind_of(&error);
    let message = match kind {
        StoreErrorKind::Unavailable => return StoreError::unavailable(error),
        StoreErrorKind::CapacityExhausted => {
            "Redis is out of memory (maxmemory reached, and records may not be evicted)"
        }
        StoreErrorKind::Corrupt => "a key under the store's prefix holds a non-string value",
        _ if is_tls_failure(&error) => {
            "the TLS handshake with Redis failed (is the server's certificate trusted and \
             issued for the host in the URL? does the server require a client certificate?)"
        }
        _ if is_auth_failure(&error) => {
            "Redis refused the credentials or the permissions of the connection (check the \
             user and password in the URL, and the ACL)"
        }
        // An error about a command the server does not know quotes its arguments, binary
        // ones included, which the client cannot read: the same cause, most likely.
        _ if error.kind() == Kind::Parse => {
            "Redis sent a reply the client could not read (an error about a command it does \
             not know? the store needs Redis 7.0 or later; or the URL is not a Redis server's)"
        }
        _ if is_syntax_error(&error) || is_unknown_command(&error) => {
            "Redis rejected the command; the store needs Redis 7.0 or later (SET ... NX GET, \
             script flags)"
        }
        _ => "Redis reported an error",
    };
    StoreError::new(kind, message).with_source(error)
}

fn is_syntax_error(error: &RedisError) -> bool {
    error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("syntax error"))
}

fn is_unknown_command(error: &RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|d| d.contains("unknown command") || d.contains("unknown subcommand"))
}

fn is_auth_failure(error: &RedisError) -> bool {
    error.kind() == Kind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// A TLS handshake or certificate failure, surfaced by the redis crate as an I/O error that
/// wraps the rustls error.
fn is_tls_failure(error: &RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    // The redis crate keeps the I/O error behind an `Arc`, which is the error `source` gives.
    let Some(io) = error.source().and_then(|source| {
        source.downcast_ref::<io::Error>().or_else(|| {
            source
                .downcast_ref::<Shared>()
                .and_then(|shared| shared.downcast_ref::<io::Error>())
        })
    }) else {
        return false;
    };
    io.get_ref().is_some_and(|inner| {
        inner.is::<rustls::Error>() || inner.is::<rustls::pki_types::InvalidDnsNameError>()
    })
}

/// A configuration the store refuses when it is built.
pub(crate) fn config_error(what: &str, error: RedisError) -> StoreError {
    StoreError::new(StoreErrorKind::Backend, format!("invalid {what}")).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
    }

    #[test]
    fn kinds() {
        let io = |kind| RedisError::from(io::Error::from(kind));
        assert_eq!(
            kind_of(&io(io::ErrorKind::TimedOut)),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&io(io::ErrorKind::ConnectionRefused)),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&server(
                "OOM",
                "command not allowed when used memory > 'maxmemory'."
            )),
            StoreErrorKind::CapacityExhausted
        );
        assert_eq!(
            kind_of(&server("WRONGTYPE", "Operation against a key")),
            StoreErrorKind::Corrupt
        );
        assert_eq!(
            kind_of(&server("WRONGPASS", "invalid username-password pair")),
            StoreErrorKind::Backend
        );
        assert_eq!(
            kind_of(&RedisError::from((Kind::AuthenticationFailed, "bad"))),
            StoreErrorKind::Backend
        );
        let tls = RedisError::from(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(kind_of(&tls), StoreErrorKind::Backend);
        assert!(map_error(tls).to_string().contains("TLS"));
    }
}
