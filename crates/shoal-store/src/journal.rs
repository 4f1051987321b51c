//! The journal: a bounded history of records derived from applied changes (shoal's cluster
//! events), kept in the replicated state so every manager holds the same history.
//!
//! Records are made while an entry is applied, by a [`Recorder`] the store's owner supplies,
//! from the change, the object it replaced and the time the leader stamped on the entry. Every
//! manager applies the same entries, so every manager makes the same records at the same
//! [`Position`]s: nothing to hand over when the leader changes, and no record is made twice
//! (a restart rebuilds the records of the entries after the last snapshot as it replays them;
//! the snapshot carries the ones before). No I/O here.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::object::{Change, Object};

/// Where a record sits in the history: the raft entry whose changes made it, and its place
/// among that entry's records. The same on every manager, so it orders and names a record.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Raft log index of the entry.
    pub index: u64,
    /// Place among the records of that entry, from 0.
    pub ordinal: u32,
}

/// One kept record.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it sits in the history.
    pub position: Position,
    /// When the leader proposed the entry that made it, in nanoseconds since the Unix epoch.
    pub time: i64,
    /// What the recorder made of the change (opaque to the store).
    pub data: Arc<[u8]>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("position", &self.position)
            .field("time", &self.time)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// Turns applied changes into journal records. It runs on every manager's apply path and its
/// output is replicated state, so it must be a pure function of its arguments.
pub trait Recorder: Send + Sync + 'static {
    /// How many records the journal keeps (the oldest go first).
    fn keep(&self) -> usize;
    /// Whether changes of objects of `kind` can make records; others cost nothing.
    fn wants(&self, kind: &str) -> bool;
    /// The record one change makes, if any. `previous` is the object an update replaced.
    fn record(&self, change: &Change, previous: Option<&Object>) -> Option<Vec<u8>>;
}

/// The kept records, oldest first, in position order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Journal {
    records: VecDeque<Record>,
    keep: usize,
}

impl Journal {
    /// An empty journal that keeps at most `keep` records.
    pub(crate) fn new(keep: usize) -> Journal {
        Journal {
            records: VecDeque::new(),
            keep,
        }
    }

    /// A journal holding `records` (from a snapshot), trimmed to `keep`.
    pub(crate) fn from_records(records: Vec<Record>, keep: usize) -> Journal {
        let mut j = Journal::new(keep);
        for r in records {
            j.push(r);
        }
        j
    }

    /// Appends a record, dropping the oldest beyond the bound. A record at or before the last
    /// position is already here (a replay) and is ignored.
    pub(crate) fn push(&mut self, record: Record) {
        if self
            .records
            .back()
            .is_some_and(|last| last.position >= record.position)
        {
            return;
        }
        self.records.push_back(record);
        while self.records.len() > self.keep {
            self.records.pop_front();
        }
    }

    /// The records after `after` (all of them for None), oldest first.
    pub(crate) fn after(&self, after: Option<Position>) -> Vec<Record> {
        let start = match after {
            None => 0,
            Some(p) => self.records.partition_point(|r| r.position <= p),
        };
        self.records.range(start..).cloned().collect()
    }

    /// The position of the newest record.
    pub(crate) fn last(&self) -> Option<Position> {
        self.records.back().map(|r| r.position)
    }

    /// Every record, oldest first, for snapshots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// The bound this journal keeps to.
    pub(crate) fn keep(&self) -> usize {
        self.keep
    }
}

/// Makes the records of one applied entry's changes, numbering them from 0 in change order.
pub(crate) fn records_of<'a>(
    recorder: &dyn Recorder,
    index: u64,
    time: i64,
    changes: impl IntoIterator<Item = (&'a Change, Option<&'a Object>)>,
) -> Vec<Record> {
    let mut out = Vec::new();
    for (change, previous) in changes {
        if !recorder.wants(&change.kind) {
            continue;
        }
        let Some(data) = recorder.record(change, previous) else {
            continue;
        };
        let Ok(ordinal) = u32::try_from(out.len()) else {
            break;
        };
        out.push(Record {
            position: Position { index, ordinal },
            time,
            data: Arc::from(data),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Action;

    fn rec(index: u64, ordinal: u32) -> Record {
        Record {
            position: Position { index, ordinal },
            time: index as i64,
            data: Arc::from(&b"x"[..]),
        }
    }

    #[test]
    fn keeps_the_newest_and_reads_after_a_position() {
        let mut j = Journal::new(3);
        for (i, o) in [(1, 0), (2, 0), (2, 1), (5, 0)] {
            j.push(rec(i, o));
        }
        let pos: Vec<_> = j.after(None).iter().map(|r| r.position).collect();
        assert_eq!(
            pos,
            [
                Position {
                    index: 2,
                    ordinal: 0
                },
                Position {
                    index: 2,
                    ordinal: 1
                },
                Position {
                    index: 5,
                    ordinal: 0
                }
            ]
        );
        let after = |index, ordinal| j.after(Some(Position { index, ordinal })).len();
        assert_eq!(after(2, 0), 2);
        assert_eq!(after(2, 1), 1);
        assert_eq!(after(3, 0), 1, "a position between records");
        assert_eq!(after(0, 0), 3, "a position before the oldest kept");
        assert_eq!(after(5, 0), 0);
        assert_eq!(
            j.last(),
            Some(Position {
                index: 5,
                ordinal: 0
            })
        );
    }

    #[test]
    fn a_replayed_record_is_not_kept_twice() {
        let mut j = Journal::new(10);
        j.push(rec(4, 0));
        j.push(rec(4, 0));
        j.push(rec(3, 0));
        assert_eq!(j.after(None).len(), 1);
    }

    struct Names;
    impl Recorder for Names {
        fn keep(&self) -> usize {
            10
        }
        fn wants(&self, kind: &str) -> bool {
            kind == "service"
        }
        fn record(&self, change: &Change, previous: Option<&Object>) -> Option<Vec<u8>> {
            let prev = previous.map(|p| p.version).unwrap_or(0);
            (change.action != Action::Created || change.id != "quiet")
                .then(|| format!("{}:{prev}", change.id).into_bytes())
        }
    }

    #[test]
    fn records_are_numbered_in_change_order_skipping_what_makes_none() {
        let obj = |kind: &str, id: &str, version| Object {
            kind: kind.into(),
            id: id.into(),
            name: None,
            version,
            data: Arc::from(&b"{}"[..]),
        };
        let change = |kind: &str, id: &str, action| Change {
            kind: kind.into(),
            id: id.into(),
            action,
            object: Some(obj(kind, id, 9)),
        };
        let old = obj("service", "b", 7);
        let changes = [
            (change("task", "t", Action::Created), None),
            (change("service", "quiet", Action::Created), None),
            (change("service", "a", Action::Created), None),
            (change("service", "b", Action::Updated), Some(&old)),
        ];
        let out = records_of(
            &Names,
            9,
            1234,
            changes.iter().map(|(c, p)| (c, p.map(|o| o as &Object))),
        );
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.position.ordinal,
                    r.time,
                    String::from_utf8(r.data.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [(0, 1234, "a:0".to_string()), (1, 1234, "b:7".to_string())]
        );
    }
}
