//! Credentials out of logs and error messages: every URL that is printed goes through
//! [`url`] (or [`spec`] for a comma-separated list, as `IDEMPOTENCY_STORE` takes).

/// Query parameters that carry a secret (libpq's `password`, `sslpassword`, ...).
const SECRET_PARAMETERS: [&str; 4] = ["password", "sslpassword", "pass", "token"];

/// `url` with the password of its user info and secret query parameters replaced by `***`.
/// User info without a `:` is kept when it is a PostgreSQL user name, and hidden otherwise
/// (`redis://SECRET@host` authenticates with a bare password).
pub fn url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(start);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (credentials, host) = authority.split_at(at);
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None if scheme.starts_with("postgres") => authority.to_owned(),
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// Each comma-separated URL of `spec` redacted (a Redis Cluster's node list); a plain word
/// (`database`, `memory`) is returned as it is.
pub fn spec(spec: &str) -> String {
    spec.split(',').map(url).collect::<Vec<_>>().join(",")
}

/// `text` (an error message) with every URL in it redacted: a URL runs from its scheme to the
/// next whitespace, quote or backtick.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |i| i + 1);
        let end = rest[found..]
            .find(|c: char| c.is_whitespace() || "'\"`".contains(c))
            .map_or(rest.len(), |i| found + i);
        out.push_str(&rest[..start]);
        out.push_str(&spec(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) => {
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    match fragment {
        Some(fragment) => format!("{path}?{query}#{fragment}"),
        None => format!("{path}?{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            url("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(url("redis://:secret@h:6379"), "redis://:***@h:6379");
        assert_eq!(url("rediss://secret@h:6379/0"), "rediss://***@h:6379/0");
        assert_eq!(url("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(url("sqlite://a@b.db"), "sqlite://***@b.db");
        assert_eq!(
            spec("redis://:a@h1:7001,redis://u:b@h2:7002"),
            "redis://:***@h1:7001,redis://u:***@h2:7002"
        );
        assert_eq!(spec("database"), "database");
        assert_eq!(
            text("error: invalid value 'redis://:pw@h:1,x' for '--idempotency-store'"),
            "error: invalid value 'redis://:***@h:1,x' for '--idempotency-store'"
        );
        assert_eq!(text("no url here"), "no url here");
    }
}
