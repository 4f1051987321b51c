//! Who is logged in: sessions kept in this manager's memory (a restart logs everyone out),
//! their CSRF tokens, and the slowdown of repeated failed logins. Time comes in as an argument,
//! so the rules are tested without waiting.

use base64::Engine;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after the login, however busy.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// Failed logins from one address allowed before the waits begin.
pub const FREE_FAILURES: u32 = 3;
/// The longest wait imposed between attempts from one address.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// At most this many sessions live at once; the oldest goes first (a login loop cannot fill
/// the manager's memory).
pub const MAX_SESSIONS: usize = 1024;
/// At most this many addresses' failure counts are remembered.
const MAX_TRACKED: usize = 4096;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// What every state-changing request must echo in `X-CSRF-Token`.
    pub csrf: String,
    /// Who: `admin` (password) or a client certificate's name.
    pub user: String,
    created: Instant,
    last_seen: Instant,
}

impl Session {
    /// When it ends if unused from now.
    pub fn expires(&self, now: Instant) -> Instant {
        (now + IDLE).min(self.created + ABSOLUTE)
    }
}

/// A random token: 32 bytes from the OS's generator, URL-safe base64.
pub fn token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The sessions of this manager.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session for `user`; returns its cookie token.
    pub fn open(&mut self, user: &str, now: Instant) -> (String, Session) {
        self.prune(now);
        if self.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(t, _)| t.clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        let s = Session {
            csrf: token(),
            user: user.to_string(),
            created: now,
            last_seen: now,
        };
        let t = token();
        self.by_token.insert(t.clone(), s.clone());
        (t, s)
    }

    /// The session of a cookie token if it is still valid, marked as used now.
    pub fn touch(&mut self, token: &str, now: Instant) -> Option<Session> {
        let s = self.by_token.get_mut(token)?;
        if now >= s.expires(s.last_seen) || now >= s.created + ABSOLUTE {
            self.by_token.remove(token);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// Whether a cookie token's session is still valid, without counting this as use (an open
    /// page's live stream does not keep an idle session alive).
    pub fn alive(&self, token: &str, now: Instant) -> bool {
        self.by_token
            .get(token)
            .is_some_and(|s| now < s.last_seen + IDLE && now < s.created + ABSOLUTE)
    }

    /// Ends a session (logout).
    pub fn close(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        self.by_token
            .retain(|_, s| now < s.last_seen + IDLE && now < s.created + ABSOLUTE);
    }
}

/// Failed logins per client address: after [`FREE_FAILURES`], each further failure doubles the
/// wait before the next attempt is even checked (1 s, 2 s, 4 s... at most [`MAX_WAIT`]). A
/// success clears the address.
#[derive(Default)]
pub struct Throttle {
    by_addr: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    /// How long `addr` must still wait before its next attempt is checked (zero: go ahead).
    pub fn wait(&self, addr: IpAddr, now: Instant) -> Duration {
        self.by_addr
            .get(&addr)
            .map(|&(_, until)| until.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// Records a failed attempt; returns the wait it imposes.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) -> Duration {
        if self.by_addr.len() >= MAX_TRACKED {
            self.by_addr.retain(|_, &mut (_, until)| until > now);
        }
        let e = self.by_addr.entry(addr).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        let wait = match e.0.checked_sub(FREE_FAILURES) {
            None | Some(0) => Duration::ZERO,
            Some(n) => Duration::from_secs(1u64 << (n - 1).min(6)).min(MAX_WAIT),
        };
        e.1 = now + wait;
        wait
    }

    /// Clears an address after a successful login.
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_or_too_old_and_at_logout() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (tok, first) = s.open("admin", t0);
        assert_eq!(first.csrf.len(), 43, "32 random bytes, base64url");
        assert!(s.touch(&tok, t0 + IDLE - Duration::from_secs(1)).is_some());
        // Used a moment ago: the idle clock restarted.
        assert!(s.touch(&tok, t0 + IDLE + Duration::from_secs(10)).is_some());
        // Watching (a live stream asks `alive`) is not use.
        assert!(s.alive(&tok, t0 + 2 * IDLE));
        assert!(!s.alive(&tok, t0 + 2 * IDLE + Duration::from_secs(11)));
        // Idle too long.
        assert!(s
            .touch(&tok, t0 + 2 * IDLE + Duration::from_secs(11))
            .is_none());
        assert!(s.is_empty(), "an expired session is forgotten");

        // However busy, never past the absolute limit.
        let (tok, _) = s.open("admin", t0);
        let mut t = t0;
        while t + IDLE / 2 < t0 + ABSOLUTE {
            t += IDLE / 2;
            assert!(s.touch(&tok, t).is_some());
        }
        assert!(s.touch(&tok, t0 + ABSOLUTE).is_none());

        let (tok, _) = s.open("admin", t0);
        s.close(&tok);
        assert!(s.touch(&tok, t0).is_none());
        assert!(s.touch("forged", t0).is_none());
    }

    #[test]
    fn sessions_are_capped_and_tokens_differ() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (first, _) = s.open("admin", t0);
        for i in 0..MAX_SESSIONS {
            s.open("admin", t0 + Duration::from_millis(i as u64 + 1));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(
            s.touch(&first, t0 + Duration::from_secs(1)).is_none(),
            "the least recently used session made room"
        );
        assert_ne!(token(), token());
    }

    #[test]
    fn repeated_failures_from_one_address_wait_longer_and_longer() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut th = Throttle::default();
        let waits: Vec<u64> = (0..12).map(|_| th.failed(a, t0).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(th.wait(a, t0).as_secs(), 60);
        assert_eq!(th.wait(a, t0 + MAX_WAIT), Duration::ZERO);
        assert_eq!(
            th.wait(b, t0),
            Duration::ZERO,
            "other addresses are not slowed"
        );
        th.succeeded(a);
        assert_eq!(th.failed(a, t0), Duration::ZERO, "a success starts over");
    }

    #[test]
    fn secrets_compare_only_equal_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
