//! Task logs on their way from a node's agent to the manager that serves `docker service logs`:
//! what a log subscription asks for, and the batches of lines that answer it (swarmkit's log
//! broker messages). They travel inside [`crate::dispatch`]'s session messages, so a node's logs
//! reach the API on any manager without another connection to the node.

use serde::{Deserialize, Serialize};

/// Bytes of log lines a node may have sent for one subscription that the manager has not
/// passed on yet: the node stops until the manager gives credit back
/// ([`crate::dispatch::ManagerMessage::LogCredit`]), so a slow client holds at most this much
/// per node in the manager's memory, and never stalls the node's session.
pub const LOG_WINDOW: u64 = 1 << 20;

/// The longest line carried whole (16 KiB, where Docker's log drivers cut lines): longer output
/// goes as several messages, as the engine itself gives it.
pub const MAX_LOG_LINE: usize = 16 << 10;

/// Line bytes per batch at most: a batch is one session message, far below the session's
/// message limit even when every byte needs a JSON escape.
pub const MAX_LOG_BATCH: usize = 256 << 10;

/// Which tasks' logs a subscription wants; a task matching any entry counts (swarmkit's
/// `LogSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSelector {
    /// Every task of these services, those that start later included (with `follow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_ids: Vec<String>,
    /// These tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_ids: Vec<String>,
}

impl LogSelector {
    /// True if the task `task_id` of service `service_id` is wanted.
    pub fn matches(&self, task_id: &str, service_id: &str) -> bool {
        self.task_ids.iter().any(|t| t == task_id)
            || self.service_ids.iter().any(|s| s == service_id)
    }
}

/// How a subscription is served, as `docker service logs` asks (per task container, as the
/// engine's own container logs read them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Keep streaming new lines (and tasks that start later) until the client goes away.
    #[serde(default)]
    pub follow: bool,
    /// Lines written to stdout.
    #[serde(default)]
    pub stdout: bool,
    /// Lines written to stderr.
    #[serde(default)]
    pub stderr: bool,
    /// Only the last this many lines of each task (None: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only lines written at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<LogTime>,
    /// Only lines written at or before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<LogTime>,
}

impl LogOptions {
    /// True if a line of `stream` written at `time` is wanted.
    pub fn wants(&self, stream: LogStream, time: LogTime) -> bool {
        let chosen = match stream {
            LogStream::Stdout => self.stdout,
            LogStream::Stderr => self.stderr,
        };
        chosen && self.since.is_none_or(|s| time >= s) && self.until.is_none_or(|u| time <= u)
    }
}

/// A point in time to the nanosecond, as log lines carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogTime {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds into the second (below 10^9).
    pub nanos: u32,
}

impl LogTime {
    /// A `since`/`until` query value: Unix seconds with optional fractional digits
    /// (`1700000000.5` is half a second later), as the engine's `ParseTimestamps` reads it, or an
    /// RFC 3339 time (`2024-01-02T13:23:37Z`). None for anything else.
    pub fn parse_query(s: &str) -> Option<LogTime> {
        let (secs, frac) = match s.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        let unsigned = secs.strip_prefix(['-', '+']).unwrap_or(secs);
        if digits(unsigned) && frac.is_none_or(digits) {
            let secs: i64 = secs.parse().ok()?;
            let nanos = match frac {
                // Scaled to nanoseconds as the engine does: "5" is 0.5 s; past 9 digits cut.
                Some(f) => {
                    let f = &f[..f.len().min(9)];
                    let n: u32 = f.parse().ok()?;
                    n * 10u32.pow(9 - f.len() as u32)
                }
                None => 0,
            };
            return Some(LogTime { secs, nanos });
        }
        Self::parse_rfc3339(s)
    }

    /// An RFC 3339 time, as the engine prints it before each log line.
    pub fn parse_rfc3339(s: &str) -> Option<LogTime> {
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(LogTime {
            secs: t.timestamp(),
            nanos: t.timestamp_subsec_nanos().min(999_999_999),
        })
    }

    /// Now, on this machine's clock.
    pub fn now() -> LogTime {
        let t = chrono::Utc::now();
        LogTime {
            secs: t.timestamp(),
            nanos: t.timestamp_subsec_nanos().min(999_999_999),
        }
    }

    /// As dockerd prints a log line's time with `timestamps`: RFC 3339 in UTC with all nine
    /// digits of nanoseconds (Go's `2006-01-02T15:04:05.000000000Z07:00`).
    pub fn rfc3339_fixed(&self) -> String {
        match chrono::DateTime::from_timestamp(self.secs, self.nanos) {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
            None => "0001-01-01T00:00:00.000000000Z".to_string(),
        }
    }

    /// The whole second at or before this time (what the engine's `since` takes).
    pub fn floor_secs(&self) -> i64 {
        self.secs
    }

    /// The whole second at or after this time (what the engine's `until` takes).
    pub fn ceil_secs(&self) -> i64 {
        if self.nanos > 0 {
            self.secs.saturating_add(1)
        } else {
            self.secs
        }
    }
}

/// Which of a container's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output (stream 1 of the engine's multiplexed format).
    Stdout,
    /// Standard error (stream 2).
    Stderr,
}

/// A subscription as the manager sends it to a node: serve the logs of the node's tasks the
/// selector matches, in batches of at most [`MAX_LOG_BATCH`] line bytes, never more than
/// `window` bytes ahead of the credit the manager gives back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSubscription {
    /// Names the subscription in every message about it.
    pub id: String,
    /// The tasks wanted.
    pub selector: LogSelector,
    /// How.
    pub options: LogOptions,
    /// Bytes the node may send before it waits for credit ([`LogMessage::cost`]).
    pub window: u64,
}

/// One line (or a piece of a long one) of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMessage {
    /// The task whose container wrote it.
    pub task_id: String,
    /// Where it was written.
    pub stream: LogStream,
    /// When the engine took it.
    pub time: LogTime,
    /// The line, its newline included, as the container wrote it.
    #[serde(with = "text_or_bytes")]
    pub data: Vec<u8>,
}

impl LogMessage {
    /// What the message counts against a subscription's window: its bytes plus a little for
    /// the message itself, so a flood of empty lines is bounded too.
    pub fn cost(&self) -> u64 {
        self.data.len() as u64 + 64
    }
}

/// A node's answer to a subscription: some lines, and whether it is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The subscription.
    pub id: String,
    /// Lines, in the order each task wrote them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<LogMessage>,
    /// The node has sent everything it will for this subscription (not following).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// What the node's session hands its agent about log subscriptions: the manager's three
/// messages, and the end of the session, which ends every subscription it brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCommand {
    /// Start serving a subscription.
    Subscribe(Box<LogSubscription>),
    /// The manager passed on `bytes` of the subscription's lines.
    Credit {
        /// The subscription.
        id: String,
        /// Bytes given back.
        bytes: u64,
    },
    /// Stop serving the subscription.
    Close {
        /// The subscription.
        id: String,
    },
    /// The session with the manager ended: stop serving every subscription.
    CloseAll,
}

/// Log data as JSON: a string when it is UTF-8 (log lines nearly always are: a byte each), an
/// array of bytes otherwise, so nothing a container writes is lost or mangled on the way. For
/// `#[serde(with = ...)]` on a `Vec<u8>`.
pub mod text_or_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Data {
        Text(String),
        Bytes(Vec<u8>),
    }

    /// Writes `data` as a string if it is UTF-8, else as an array of bytes.
    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(data) {
            Ok(text) => text.serialize(s),
            Err(_) => data.serialize(s),
        }
    }

    /// Reads either form back.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Data::deserialize(d)? {
            Data::Text(t) => t.into_bytes(),
            Data::Bytes(b) => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_times_read_as_the_engine_reads_them() {
        let t = |secs, nanos| Some(LogTime { secs, nanos });
        assert_eq!(LogTime::parse_query("1700000000"), t(1_700_000_000, 0));
        assert_eq!(
            LogTime::parse_query("1700000000.000000001"),
            t(1_700_000_000, 1)
        );
        assert_eq!(
            LogTime::parse_query("1700000000.5"),
            t(1_700_000_000, 500_000_000)
        );
        assert_eq!(LogTime::parse_query("-5"), t(-5, 0));
        assert_eq!(
            LogTime::parse_query("2024-01-02T13:23:37.25Z"),
            t(1_704_201_817, 250_000_000)
        );
        for bad in ["", "yesterday", "1.", ".5", "1.x", "1e9", "10m", "1.-3"] {
            assert_eq!(LogTime::parse_query(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_print_with_nine_digits_as_dockerd_prints_them() {
        let t = LogTime {
            secs: 1_704_201_817,
            nanos: 250_000_000,
        };
        assert_eq!(t.rfc3339_fixed(), "2024-01-02T13:23:37.250000000Z");
        assert_eq!(LogTime::parse_rfc3339(&t.rfc3339_fixed()), Some(t));
        // The engine trims trailing zeros; the same instant either way.
        assert_eq!(LogTime::parse_rfc3339("2024-01-02T13:23:37.25Z"), Some(t));
        assert_eq!(
            (t.floor_secs(), t.ceil_secs()),
            (1_704_201_817, 1_704_201_818)
        );
    }

    #[test]
    fn options_choose_streams_and_a_time_window() {
        let at = |secs| LogTime { secs, nanos: 0 };
        let o = LogOptions {
            stdout: true,
            since: Some(at(10)),
            until: Some(at(20)),
            ..Default::default()
        };
        assert!(o.wants(LogStream::Stdout, at(10)));
        assert!(o.wants(LogStream::Stdout, at(20)));
        assert!(!o.wants(LogStream::Stdout, at(9)));
        assert!(!o.wants(LogStream::Stdout, at(21)));
        assert!(!o.wants(LogStream::Stderr, at(15)));
    }

    #[test]
    fn log_data_survives_json_whatever_its_bytes() {
        for data in [b"hello\n".to_vec(), vec![0xff, 0xfe, b'\n'], Vec::new()] {
            let m = LogMessage {
                task_id: "t".into(),
                stream: LogStream::Stderr,
                time: LogTime::default(),
                data: data.clone(),
            };
            let json = serde_json::to_string(&m).unwrap();
            let back: LogMessage = serde_json::from_str(&json).unwrap();
            assert_eq!(back.data, data, "{json}");
        }
        let text = serde_json::to_string(&LogMessage {
            task_id: "t".into(),
            stream: LogStream::Stdout,
            time: LogTime::default(),
            data: b"hi\n".to_vec(),
        })
        .unwrap();
        assert!(text.contains(r#""data":"hi\n""#), "{text}");
    }
}
