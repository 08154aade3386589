//! The `Retry-After` response header (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How long `value`, a `Retry-After` field value, asks the client to wait, seen at `now`.
///
/// - delay-seconds (`120`): that many seconds (numbers too large for a `u64` saturate);
/// - an HTTP-date in any of the three forms RFC 9110 allows (`Sun, 06 Nov 1994 08:49:37
///   GMT`, the obsolete RFC 850 and asctime forms): the time until then, zero if it has
///   passed;
/// - anything else (empty, negative, fractional, garbage): `None`, and the caller falls back
///   to its backoff.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use reqwest_idempotency::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 08:49:27 GMT
/// assert_eq!(retry_after::parse("5", now), Some(Duration::from_secs(5)));
/// assert_eq!(
///     retry_after::parse("Sun, 06 Nov 1994 08:49:37 GMT", now),
///     Some(Duration::from_secs(10)),
/// );
/// assert_eq!(retry_after::parse("soon", now), None);
/// ```
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and a longer wait than u64 seconds is "forever".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait the first `Retry-After` field of `headers` asks for, seen at `now` (see
/// [`parse`]); `None` when there is none or it cannot be read.
pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse(value, now)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110.
    fn example_date() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn delay_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(parse("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse(" 3\t", now),
            Some(Duration::from_secs(3)),
            "OWS is trimmed"
        );
        assert_eq!(parse("007", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX)),
            "overflow saturates"
        );
    }

    #[test]
    fn http_dates_in_every_form() {
        let before = example_date() - Duration::from_secs(90);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",  // IMF-fixdate
            "Sunday, 06-Nov-94 08:49:37 GMT", // obsolete RFC 850
            "Sun Nov  6 08:49:37 1994",       // obsolete asctime
        ] {
            assert_eq!(parse(form, before), Some(Duration::from_secs(90)), "{form}");
        }
        // A date that has passed: retry now.
        let after = example_date() + Duration::from_secs(5);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", after),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", example_date()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn anything_else_is_ignored() {
        let now = SystemTime::now();
        for bad in [
            "",
            "  ",
            "-1",
            "1.5",
            "+3",
            "3s",
            "1e3",
            "soon",
            "0x10",
            "3, 4",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_first_header() {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers, now), None);
        headers.append(RETRY_AFTER, HeaderValue::from_static("2"));
        headers.append(RETRY_AFTER, HeaderValue::from_static("9"));
        assert_eq!(from_headers(&headers, now), Some(Duration::from_secs(2)));
        let mut binary = HeaderMap::new();
        binary.insert(RETRY_AFTER, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(from_headers(&binary, now), None);
    }
}
