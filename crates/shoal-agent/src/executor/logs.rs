//! A task container's logs from the engine, as lines with their stream and time: what the
//! agent's log subscriptions (`crate::logs`) publish to the manager. The engine is asked for
//! timestamps always (the manager prints them only when the client asked), for whole seconds
//! of `since` and `until` (all the engine takes), and the lines are then held to the exact
//! window.

use super::{engine, ExecError};
use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;
use shoal_api::labels;
use shoal_api::logs::{LogOptions, LogStream, LogTime, MAX_LOG_LINE};
use std::collections::{HashMap, VecDeque};

/// One line (or a piece of a long one) of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Where the container wrote it.
    pub stream: LogStream,
    /// When the engine took it.
    pub time: LogTime,
    /// The line, its newline included.
    pub data: Vec<u8>,
}

/// A container's log lines as they come.
pub type LogLines = BoxStream<'static, Result<LogLine, ExecError>>;

/// The log lines of `task_id`'s container on this node.
pub(super) async fn read(
    docker: &Docker,
    node_id: &str,
    task_id: &str,
    options: &LogOptions,
) -> Result<LogLines, ExecError> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{}={task_id}", labels::TASK_ID),
            format!("{}={node_id}", labels::NODE_ID),
        ],
    )]);
    let found = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(engine("finding the container of task", task_id))?;
    let id = found
        .into_iter()
        .find_map(|c| c.id)
        .ok_or_else(|| ExecError::NoContainer {
            task: task_id.to_string(),
        })?;
    let secs = |s: i64| i32::try_from(s.max(0)).unwrap_or(i32::MAX);
    let query = LogsOptions {
        follow: options.follow,
        stdout: options.stdout,
        stderr: options.stderr,
        // 0 is "not set" for the engine.
        since: options.since.map(|t| secs(t.floor_secs())).unwrap_or(0),
        until: options.until.map(|t| secs(t.ceil_secs())).unwrap_or(0),
        timestamps: true,
        tail: options
            .tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".to_string()),
    };
    let raw = docker.logs(&id, Some(query)).boxed();
    let state = Reader {
        raw,
        what: id,
        options: options.clone(),
        console: Vec::new(),
        ready: VecDeque::new(),
        ended: false,
    };
    Ok(futures::stream::unfold(state, |mut r| async move {
        loop {
            if let Some(line) = r.ready.pop_front() {
                return Some((line, r));
            }
            if r.ended {
                return None;
            }
            match r.raw.next().await {
                Some(item) => r.take(item),
                None => {
                    r.ended = true;
                    // A TTY's last words without a newline.
                    let rest = std::mem::take(&mut r.console);
                    if !rest.is_empty() {
                        r.line(LogStream::Stdout, &rest);
                    }
                }
            }
        }
    })
    .boxed())
}

/// Turns the engine's frames into lines.
struct Reader {
    raw: BoxStream<'static, Result<LogOutput, bollard::errors::Error>>,
    what: String,
    options: LogOptions,
    /// A TTY container's output comes unframed: bytes since the last newline.
    console: Vec<u8>,
    ready: VecDeque<Result<LogLine, ExecError>>,
    ended: bool,
}

impl Reader {
    fn take(&mut self, item: Result<LogOutput, bollard::errors::Error>) {
        match item {
            // One frame is one message of the log driver: a line or a piece of a long one.
            Ok(LogOutput::StdOut { message }) => self.line(LogStream::Stdout, &message),
            Ok(LogOutput::StdErr { message }) => self.line(LogStream::Stderr, &message),
            Ok(LogOutput::Console { message }) => {
                self.console.extend_from_slice(&message);
                while let Some(end) = self.console.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.console.drain(..=end).collect();
                    self.line(LogStream::Stdout, &line);
                }
                if self.console.len() > MAX_LOG_LINE * 2 {
                    let line = std::mem::take(&mut self.console);
                    self.line(LogStream::Stdout, &line);
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                self.ready
                    .push_back(Err(engine("reading the logs of container", &self.what)(e)));
                self.ended = true;
            }
        }
    }

    /// `<time> <line>` as the engine sends it with timestamps: kept when the options want it,
    /// cut into pieces of at most [`MAX_LOG_LINE`].
    fn line(&mut self, stream: LogStream, message: &[u8]) {
        let (time, data) = split_time(message);
        if !self.options.wants(stream, time) {
            return;
        }
        if data.is_empty() {
            return;
        }
        for piece in data.chunks(MAX_LOG_LINE) {
            self.ready.push_back(Ok(LogLine {
                stream,
                time,
                data: piece.to_vec(),
            }));
        }
    }
}

/// The engine's timestamp off the front of a message; a message without one (an engine that
/// ignored `timestamps`) is taken as written now.
fn split_time(message: &[u8]) -> (LogTime, &[u8]) {
    if let Some(sp) = message.iter().position(|b| *b == b' ') {
        if let Some(t) = std::str::from_utf8(&message[..sp])
            .ok()
            .and_then(LogTime::parse_rfc3339)
        {
            return (t, &message[sp + 1..]);
        }
    }
    (LogTime::now(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes_of as b;

    fn bytes_of(s: &str) -> axum::body::Bytes {
        axum::body::Bytes::from(s.as_bytes().to_vec())
    }

    fn reader(options: LogOptions) -> Reader {
        Reader {
            raw: futures::stream::empty().boxed(),
            what: "c".into(),
            options,
            console: Vec::new(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    fn lines(r: &mut Reader) -> Vec<(LogStream, String)> {
        r.ready
            .drain(..)
            .map(|l| {
                let l = l.unwrap();
                (l.stream, String::from_utf8(l.data).unwrap())
            })
            .collect()
    }

    #[test]
    fn frames_become_lines_with_their_time_off_the_front() {
        let mut r = reader(LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        });
        r.take(Ok(LogOutput::StdOut {
            message: b("2024-01-02T13:23:37.25Z hello world\n"),
        }));
        r.take(Ok(LogOutput::StdErr {
            message: b("2024-01-02T13:23:38Z oops\n"),
        }));
        let t = r.ready[0].as_ref().unwrap().time;
        assert_eq!(t.rfc3339_fixed(), "2024-01-02T13:23:37.250000000Z");
        assert_eq!(
            lines(&mut r),
            [
                (LogStream::Stdout, "hello world\n".into()),
                (LogStream::Stderr, "oops\n".into())
            ]
        );
    }

    #[test]
    fn since_and_until_hold_to_the_nanosecond() {
        let mut r = reader(LogOptions {
            stdout: true,
            since: LogTime::parse_query("1704201817.5"),
            until: LogTime::parse_query("1704201818.5"),
            ..Default::default()
        });
        for (ts, text) in [
            ("2024-01-02T13:23:37.25Z", "early\n"),
            ("2024-01-02T13:23:37.5Z", "first\n"),
            ("2024-01-02T13:23:38.5Z", "last\n"),
            ("2024-01-02T13:23:38.75Z", "late\n"),
        ] {
            r.take(Ok(LogOutput::StdOut {
                message: b(&format!("{ts} {text}")),
            }));
        }
        let got: Vec<String> = lines(&mut r).into_iter().map(|(_, l)| l).collect();
        assert_eq!(got, ["first\n", "last\n"]);
    }

    #[test]
    fn tty_output_is_cut_at_newlines_and_long_lines_into_pieces() {
        let mut r = reader(LogOptions {
            stdout: true,
            ..Default::default()
        });
        r.take(Ok(LogOutput::Console {
            message: b("2024-01-02T13:23:37Z one\r\n2024-01-02T13:23:37Z tw"),
        }));
        r.take(Ok(LogOutput::Console {
            message: b("o\r\n"),
        }));
        assert_eq!(
            lines(&mut r),
            [
                (LogStream::Stdout, "one\r\n".into()),
                (LogStream::Stdout, "two\r\n".into())
            ]
        );
        let long = format!("2024-01-02T13:23:37Z {}\n", "x".repeat(MAX_LOG_LINE + 10));
        r.take(Ok(LogOutput::StdOut { message: b(&long) }));
        let pieces = lines(&mut r);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].1.len(), MAX_LOG_LINE);
        assert_eq!(pieces[1].1, format!("{}\n", "x".repeat(10)));
    }
}
