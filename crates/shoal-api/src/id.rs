//! Object identifiers and timestamps in Docker's formats.

use rand::Rng;

/// A new 25-character base-36 identifier, the shape swarmkit gives every object.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..25)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A 64-hex-character identifier, the shape of Docker network IDs.
pub fn new_hex_id() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Now, in the RFC 3339 nanosecond form Docker uses for timestamps.
pub fn now() -> String {
    format_time(chrono::Utc::now())
}

/// A time in the form Docker uses, for decisions made at a given `now`.
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Parses a Docker timestamp; `None` if it is not one.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// `t` plus a span a user chose (a delay, a monitor window), saturating at the end of
/// chrono's calendar instead of panicking: a user's duration must never take a loop down.
pub fn later(
    t: chrono::DateTime<chrono::Utc>,
    d: chrono::Duration,
) -> chrono::DateTime<chrono::Utc> {
    t.checked_add_signed(d)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_swarmkit_shape() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, new_id());
        assert_eq!(new_hex_id().len(), 64);
    }

    #[test]
    fn timestamps_round_trip() {
        let t = now();
        assert!(parse_time(&t).is_some(), "{t}");
    }

    #[test]
    fn later_saturates() {
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        assert_eq!(later(max, chrono::Duration::nanoseconds(i64::MAX)), max);
        let t = parse_time("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            later(t, chrono::Duration::seconds(1)).timestamp(),
            t.timestamp() + 1
        );
    }
}
