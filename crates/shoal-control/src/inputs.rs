//! What a decision takes from outside besides the cluster's state: the time, and a seed for the
//! IDs of the objects it creates. The caller reads the clock and draws the seed; the same state
//! and inputs always give the same plan.

use chrono::{DateTime, Utc};

/// The outside world as one decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// The time the decision is made at: delays, monitor windows and schedules count from it.
    pub now: DateTime<Utc>,
    /// Seeds the IDs of new tasks ([`Ids`]); the manager draws a fresh one per pass.
    pub seed: u64,
}

impl Inputs {
    /// Inputs at `now` with IDs from `seed`.
    pub fn new(now: DateTime<Utc>, seed: u64) -> Self {
        Inputs { now, seed }
    }

    /// `now` in Docker's timestamp form.
    pub fn stamp(&self) -> String {
        shoal_api::id::format_time(self.now)
    }
}

/// New object IDs drawn from a seed (splitmix64), in swarmkit's shape: 25 base-36 characters.
/// Deterministic so that a replayed decision names its tasks the same; a seed drawn per pass
/// keeps them unique in practice, and a repeat would only fail the write's "must not exist"
/// precondition, never overwrite a task.
#[derive(Debug, Clone)]
pub struct Ids {
    state: u64,
}

impl Ids {
    /// IDs starting from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Ids { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next ID.
    pub fn next_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        // Five characters per draw: 36^5 < 2^26, so each takes a fresh slice of the 64 bits.
        let mut out = String::with_capacity(25);
        while out.len() < 25 {
            let mut x = self.next_u64();
            for _ in 0..5 {
                out.push(ALPHABET[(x % 36) as usize] as char);
                x /= 36;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_swarmkit_shaped_distinct_and_replayable() {
        let mut a = Ids::seeded(7);
        let first: Vec<String> = (0..1000).map(|_| a.next_id()).collect();
        assert!(first.iter().all(|id| id.len() == 25
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())));
        let distinct: std::collections::HashSet<&String> = first.iter().collect();
        assert_eq!(distinct.len(), 1000);
        let mut again = Ids::seeded(7);
        assert_eq!(
            again.next_id(),
            first[0],
            "the same seed names the same IDs"
        );
        assert_ne!(Ids::seeded(8).next_id(), first[0]);
    }
}
