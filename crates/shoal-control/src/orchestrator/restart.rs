//! The restart policy: whether and when a stopped task's slot gets a replacement.

use shoal_api::id;
use shoal_api::models::{TaskSpecRestartPolicyConditionEnum as Condition, TaskState};
use shoal_api::objects::{StoredService, StoredTask};

/// Swarm's default delay before a replacement starts.
pub const DEFAULT_DELAY_NS: i64 = 5_000_000_000;

/// What to do with a slot whose runnable task has stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Replace it now.
    Now,
    /// Replace it at this time.
    At(chrono::DateTime<chrono::Utc>),
    /// Leave the slot as it is (policy says no more restarts).
    Never,
}

/// Decides for `stopped` (the slot's task, now terminal), given the slot's earlier tasks.
pub fn decide(
    svc: &StoredService,
    stopped: &StoredTask,
    history: &[&StoredTask],
    now: chrono::DateTime<chrono::Utc>,
) -> Verdict {
    let policy = svc
        .spec()
        .task_template
        .as_ref()
        .and_then(|t| t.restart_policy.clone())
        .unwrap_or_default();
    let condition = policy.condition.unwrap_or(Condition::ANY);
    let state = stopped.state();
    let restart = match condition {
        Condition::NONE => false,
        Condition::ON_FAILURE => state != TaskState::COMPLETE,
        _ => true,
    };
    // A task stopped because we asked (shutdown) is replaced regardless of condition.
    if !restart && state != TaskState::SHUTDOWN {
        return Verdict::Never;
    }
    let ended = stopped
        .task
        .status
        .as_ref()
        .and_then(|s| s.timestamp.as_deref())
        .and_then(id::parse_time)
        .unwrap_or(now);
    if let Some(max) = policy.max_attempts.filter(|m| *m > 0) {
        let window = policy.window.unwrap_or(0);
        let since = ended
            .checked_sub_signed(chrono::Duration::nanoseconds(window))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let attempts = history
            .iter()
            .filter(|t| {
                window == 0
                    || t.task
                        .status
                        .as_ref()
                        .and_then(|s| s.timestamp.as_deref())
                        .and_then(id::parse_time)
                        .is_some_and(|ts| ts >= since)
            })
            .count() as i64;
        if attempts >= max {
            return Verdict::Never;
        }
    }
    let delay = policy.delay.unwrap_or(DEFAULT_DELAY_NS).max(0);
    let at = id::later(ended, chrono::Duration::nanoseconds(delay));
    if at <= now {
        Verdict::Now
    } else {
        Verdict::At(at)
    }
}
