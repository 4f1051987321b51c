//! The events stream of one `GET /events` on a manager: history first, from the journal and
//! the engine, ordered by time; then live events from both as they come, until `until` or
//! until the client goes away. The stream is the response body itself (no task of its own),
//! so a client that leaves drops it, and with it the engine's connection.
//!
//! The engine is asked twice so its history can be merged by time: once for `since..now`
//! (which ends), then live from `now + 1ns`; the two windows neither overlap nor leave a gap.
//! The journal needs no such care: records are read after the position last sent.

use super::filter::EventFilter;
use crate::proxy::EngineProxy;
use axum::body::{Body, BodyDataStream, Bytes};
use futures::{Stream, StreamExt};
use shoal_api::models::{EventMessage, EventMessageScopeEnum};
use shoal_store::{Position, Record, Store};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The longest engine event line kept (longer ones are dropped): an event is a few hundred
/// bytes, a container's labels make it a few KB.
const MAX_LINE: usize = 1 << 20;
/// The most engine history read before the live part starts (dockerd keeps 256 events).
const MAX_ENGINE_HISTORY: usize = 4096;
/// How long the engine may take to send its history.
const ENGINE_HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// How events are written: JSON lines (dockerd's default), or RFC 7464 JSON text sequences for
/// a client that asks for `application/json-seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One JSON value per line.
    Lines,
    /// Each JSON value after an ASCII record separator (0x1E), then a line feed.
    Seq,
}

impl Framing {
    fn frame(self, json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 2);
        if self == Framing::Seq {
            out.push(0x1e);
        }
        out.extend_from_slice(json);
        out.push(b'\n');
        Bytes::from(out)
    }
}

/// What one request asks for.
#[derive(Clone, Debug)]
pub struct Request {
    /// Events at or after this time (Unix nanoseconds); with `until`, whether history is sent.
    pub since: Option<i64>,
    /// Events at or before this time; the stream ends then.
    pub until: Option<i64>,
    /// The request's `filters`, parsed, for the swarm's events.
    pub filter: EventFilter,
    /// The request's `filters` as sent, for the engine, which filters its own events.
    pub raw_filters: Option<String>,
    /// How events are written.
    pub framing: Framing,
}

/// Where the events come from.
pub struct Sources {
    /// The manager's store, whose journal holds the swarm's events.
    pub store: Store,
    /// Cancelled when the manager stops (the node leaves the swarm): the swarm's part ends.
    pub stop: CancellationToken,
    /// The node's engine, for its own events.
    pub engine: EngineProxy,
}

/// The response body: the events `req` asks for, as of `now` (Unix nanoseconds).
pub fn events(
    src: Sources,
    req: Request,
    now: i64,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    // History is what the journal holds now; live is what comes after it.
    let mut journal = src.store.journal_watch();
    let tip = *journal.borrow_and_update();
    let state = Events {
        journal: Some((src.store, journal)),
        stop: src.stop,
        engine: src.engine,
        engine_live: None,
        cursor: tip,
        deadline: None,
        req,
        now,
        ready: VecDeque::new(),
        phase: Phase::Start,
    };
    futures::stream::unfold(
        state,
        |mut s| async move { s.next().await.map(|b| (Ok(b), s)) },
    )
}

/// What ended a wait for live events.
enum Woke {
    /// `until` came.
    Until,
    /// The manager stopped.
    Stopped,
    /// The journal moved (false: it is gone).
    Journal(bool),
    /// The engine sent an event (None: its stream ended).
    Engine(Option<Vec<u8>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Live,
    Done,
}

struct Events {
    journal: Option<(Store, watch::Receiver<Option<Position>>)>,
    stop: CancellationToken,
    engine: EngineProxy,
    engine_live: Option<Lines>,
    /// The position of the last journal record looked at.
    cursor: Option<Position>,
    /// When `until` comes, in the runtime's clock.
    deadline: Option<tokio::time::Instant>,
    req: Request,
    now: i64,
    ready: VecDeque<Bytes>,
    phase: Phase,
}

impl Events {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(b);
            }
            match self.phase {
                Phase::Start => self.start().await,
                Phase::Live => {
                    if !self.live().await {
                        self.phase = Phase::Done;
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    /// Queues the history (when `since` or `until` asks for it, as dockerd) and opens the
    /// engine's live stream, unless `until` has passed.
    async fn start(&mut self) {
        let records = match &self.journal {
            Some((store, _)) => store.journal_after(None),
            None => Vec::new(),
        };
        let tip = self.cursor;
        let records = records.iter().filter(|r| Some(r.position) <= tip);
        let (since, until) = (self.req.since, self.req.until);
        if since.is_some() || until.is_some() {
            let mut history: Vec<(i64, Bytes)> = records
                .filter(|r| since.is_none_or(|s| r.time >= s) && until.is_none_or(|u| r.time <= u))
                .filter_map(|r| self.swarm_event(r))
                .collect();
            let engine_until = until.map_or(self.now, |u| u.min(self.now));
            let engine = &self.engine;
            let (filters, framing) = (self.req.raw_filters.as_deref(), self.req.framing);
            history.extend(engine_history(engine, filters, framing, since, engine_until).await);
            history.sort_by_key(|(t, _)| *t);
            self.ready.extend(history.into_iter().map(|(_, b)| b));
        }
        if until.is_some_and(|u| u < self.now) {
            self.phase = Phase::Done;
            return;
        }
        if let Some(u) = until {
            let wait = Duration::from_nanos(u.saturating_sub(self.now).max(0) as u64);
            self.deadline = Some(tokio::time::Instant::now() + wait);
        }
        let live_since = Some(self.now.saturating_add(1));
        let filters = self.req.raw_filters.as_deref();
        self.engine_live = engine_request(&self.engine, filters, live_since, until).await;
        self.phase = Phase::Live;
    }

    /// Waits for the next live events and queues them; false when the stream is over.
    async fn live(&mut self) -> bool {
        if self.journal.is_none() && self.engine_live.is_none() {
            // Nothing more can come; the stream would only idle until `until`.
            if let Some(d) = self.deadline {
                tokio::time::sleep_until(d).await;
            }
            return false;
        }
        let woke = {
            let deadline = self.deadline;
            let stop = &self.stop;
            let journal = &mut self.journal;
            let engine = &mut self.engine_live;
            let (has_journal, has_engine) = (journal.is_some(), engine.is_some());
            tokio::select! {
                _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } },
                    if deadline.is_some() => Woke::Until,
                _ = stop.cancelled(), if has_journal => Woke::Stopped,
                changed = async {
                    match journal {
                        Some((_, rx)) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if has_journal => Woke::Journal(changed),
                line = async {
                    match engine {
                        Some(lines) => lines.next().await,
                        None => std::future::pending().await,
                    }
                }, if has_engine => Woke::Engine(line),
            }
        };
        match woke {
            Woke::Until => return false,
            Woke::Stopped | Woke::Journal(false) => self.journal = None,
            Woke::Journal(true) => self.queue_journal(),
            Woke::Engine(Some(line)) => self.ready.push_back(self.req.framing.frame(&line)),
            Woke::Engine(None) => self.engine_live = None,
        }
        true
    }

    /// Queues the journal's records after the cursor that the filter takes.
    fn queue_journal(&mut self) {
        let Some((store, _)) = &self.journal else {
            return;
        };
        let records = store.journal_after(self.cursor);
        if let Some(last) = records.last() {
            self.cursor = Some(last.position);
        }
        for r in &records {
            if let Some((_, b)) = self.swarm_event(r) {
                self.ready.push_back(b);
            }
        }
    }

    /// A journal record as the swarm event it is, framed, if the filter takes it.
    fn swarm_event(&self, r: &Record) -> Option<(i64, Bytes)> {
        let mut e: EventMessage = serde_json::from_slice(&r.data).ok()?;
        e.scope = Some(EventMessageScopeEnum::SWARM);
        e.time = Some(r.time.div_euclid(1_000_000_000));
        e.time_nano = Some(r.time);
        if !self.req.filter.matches(&e) {
            return None;
        }
        let json = serde_json::to_vec(&e).ok()?;
        Some((r.time, self.req.framing.frame(&json)))
    }
}

/// The engine's own events of `since..=until`, framed, with their times; none if it does not
/// answer.
async fn engine_history(
    engine: &EngineProxy,
    filters: Option<&str>,
    framing: Framing,
    since: Option<i64>,
    until: i64,
) -> Vec<(i64, Bytes)> {
    let Some(mut lines) = engine_request(engine, filters, since, Some(until)).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let read = async {
        while let Some(line) = lines.next().await {
            out.push((engine_time(&line), framing.frame(&line)));
            if out.len() >= MAX_ENGINE_HISTORY {
                break;
            }
        }
    };
    if tokio::time::timeout(ENGINE_HISTORY_TIMEOUT, read)
        .await
        .is_err()
    {
        tracing::debug!("the engine's event history did not end in time");
    }
    out
}

/// `GET /events` on the engine with the request's filters; None unless it answers 200.
async fn engine_request(
    engine: &EngineProxy,
    filters: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> Option<Lines> {
    let mut query = Vec::new();
    if let Some(s) = since {
        query.push(format!("since={}", unix_param(s)));
    }
    if let Some(u) = until {
        query.push(format!("until={}", unix_param(u)));
    }
    if let Some(f) = filters {
        query.push(format!(
            "filters={}",
            percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    let uri = format!(
        "/v{}/events?{}",
        engine.engine_api_version(),
        query.join("&")
    );
    let req = axum::http::Request::builder()
        .uri(uri)
        .body(Body::empty())
        .ok()?;
    let resp = engine.forward(req).await;
    if !resp.status().is_success() {
        tracing::debug!(status = %resp.status(), "the engine's events are not available");
        return None;
    }
    Some(Lines::new(resp.into_body().into_data_stream()))
}

/// A time as dockerd's `since`/`until` take it: `seconds.nanoseconds`.
fn unix_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// An engine event's time in Unix nanoseconds (`timeNano`, else `time`), for ordering history.
fn engine_time(line: &[u8]) -> i64 {
    #[derive(serde::Deserialize)]
    struct Times {
        #[serde(rename = "timeNano")]
        time_nano: Option<i64>,
        time: Option<i64>,
    }
    match serde_json::from_slice::<Times>(line) {
        Ok(Times {
            time_nano: Some(n), ..
        }) => n,
        Ok(Times { time: Some(t), .. }) => t.saturating_mul(1_000_000_000),
        _ => 0,
    }
}

/// The engine's events stream cut into its JSON values (one per line, as dockerd writes them;
/// a record separator of `application/json-seq` is dropped).
struct Lines {
    body: BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
}

impl Lines {
    fn new(body: BodyDataStream) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next non-empty line, None at the end of the stream.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                let line = trim(&line);
                if !line.is_empty() {
                    return Some(line.to_vec());
                }
                continue;
            }
            if self.ended {
                let rest = std::mem::take(&mut self.buf);
                let line = trim(&rest);
                return (!line.is_empty()).then(|| line.to_vec());
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    if self.buf.len() > MAX_LINE && !self.buf.contains(&b'\n') {
                        tracing::debug!("dropping an engine event longer than {MAX_LINE} bytes");
                        self.buf.clear();
                    }
                }
                _ => self.ended = true,
            }
        }
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\r' | b'\t' | 0x1e))
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\r' | b'\t' | 0x1e))
        .map_or(start, |i| i + 1);
    &line[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_go_to_the_engine_as_it_parses_them() {
        assert_eq!(
            unix_param(1_700_000_000_000_000_001),
            "1700000000.000000001"
        );
        assert_eq!(unix_param(0), "0.000000000");
        assert_eq!(unix_param(-500_000_000), "-1.500000000");
    }

    #[tokio::test]
    async fn engine_lines_are_cut_and_timed() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(
                b"{\"time\":5,\"timeNano\":5000000001}\n{\"ti",
            )),
            Ok(Bytes::from_static(
                b"me\":7}\n\n\x1e{\"x\":1}\r\n{\"last\":true}",
            )),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks)).into_data_stream();
        let mut lines = Lines::new(body);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while let Some(l) = lines.next().await {
            got.push(l);
        }
        let text: Vec<String> = got
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(
            text,
            [
                "{\"time\":5,\"timeNano\":5000000001}",
                "{\"time\":7}",
                "{\"x\":1}",
                "{\"last\":true}"
            ]
        );
        let times: Vec<i64> = got.iter().map(|l| engine_time(l)).collect();
        assert_eq!(times, [5_000_000_001, 7_000_000_000, 0, 0]);
    }
}
