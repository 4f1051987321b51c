//! The in-memory object index and the pure logic of applying a batch to it.
//!
//! No I/O here: the raft state machine owns one `Objects` behind a lock, readers query it directly,
//! and snapshots serialize it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::Rejection;
use crate::object::{Action, Change, Expect, Object, Op};

/// The objects of one kind, by id (sorted, for `list`) and by name.
#[derive(Default, Clone, Debug)]
struct KindIndex {
    by_id: BTreeMap<String, Object>,
    by_name: HashMap<String, String>,
}

/// Every object in the store, indexed for the reads the API needs.
#[derive(Default, Clone, Debug)]
pub(crate) struct Objects {
    kinds: HashMap<String, KindIndex>,
    count: usize,
}

/// The state of one key inside a batch being planned: the final object, if any.
struct Staged {
    kind: String,
    id: String,
    value: Option<Object>,
}

impl Objects {
    /// Looks an object up by key.
    pub(crate) fn get(&self, kind: &str, id: &str) -> Option<&Object> {
        self.kinds.get(kind)?.by_id.get(id)
    }

    /// Looks an object up by its unique name.
    pub(crate) fn find_by_name(&self, kind: &str, name: &str) -> Option<&Object> {
        let k = self.kinds.get(kind)?;
        k.by_id.get(k.by_name.get(name)?)
    }

    /// All objects of a kind, sorted by id.
    pub(crate) fn list(&self, kind: &str) -> Vec<Object> {
        self.kinds
            .get(kind)
            .map(|k| k.by_id.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of objects of all kinds.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Every object, for snapshots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Object> {
        self.kinds.values().flat_map(|k| k.by_id.values())
    }

    /// Inserts or replaces an object, keeping the name index consistent.
    pub(crate) fn insert(&mut self, obj: Object) {
        let k = self.kinds.entry(obj.kind.clone()).or_default();
        if let Some(name) = &obj.name {
            k.by_name.insert(name.clone(), obj.id.clone());
        }
        let id = obj.id.clone();
        let new_name = obj.name.clone();
        match k.by_id.insert(id.clone(), obj) {
            Some(prev) => {
                if let Some(old) = prev.name {
                    if Some(&old) != new_name.as_ref() && k.by_name.get(&old) == Some(&id) {
                        k.by_name.remove(&old);
                    }
                }
            }
            None => self.count += 1,
        }
    }

    /// Removes an object, returning it.
    pub(crate) fn remove(&mut self, kind: &str, id: &str) -> Option<Object> {
        let k = self.kinds.get_mut(kind)?;
        let prev = k.by_id.remove(id)?;
        self.count -= 1;
        if let Some(name) = &prev.name {
            if k.by_name.get(name).map(String::as_str) == Some(id) {
                k.by_name.remove(name);
            }
        }
        if k.by_id.is_empty() {
            self.kinds.remove(kind);
        }
        Some(prev)
    }

    /// Applies a batch at log index `index`: all of it or, on the first failed precondition,
    /// none of it. Returns one change per object the batch changed, each with the object an
    /// update replaced (for the journal's recorder).
    pub(crate) fn apply_batch(
        &mut self,
        index: u64,
        ops: Vec<Op>,
    ) -> Result<Vec<(Change, Option<Object>)>, Rejection> {
        let staged = self.plan(index, ops)?;
        let mut changes = Vec::with_capacity(staged.len());
        for s in staged {
            let change = match s.value {
                Some(obj) => {
                    let previous = self.get(&s.kind, &s.id).cloned();
                    let action = if previous.is_some() {
                        Action::Updated
                    } else {
                        Action::Created
                    };
                    self.insert(obj.clone());
                    let change = Change {
                        kind: s.kind,
                        id: s.id,
                        action,
                        object: Some(obj),
                    };
                    (change, previous)
                }
                None => match self.remove(&s.kind, &s.id) {
                    Some(prev) => {
                        let change = Change {
                            kind: s.kind,
                            id: s.id,
                            action: Action::Deleted,
                            object: Some(prev),
                        };
                        (change, None)
                    }
                    // Created and deleted inside the same batch, or a no-op delete.
                    None => continue,
                },
            };
            changes.push(change);
        }
        Ok(changes)
    }

    /// Checks every precondition against the state as the batch sees it (earlier ops included)
    /// and returns the final value of each touched key, in first-touch order. Changes nothing.
    fn plan(&self, index: u64, ops: Vec<Op>) -> Result<Vec<Staged>, Rejection> {
        let mut staged: Vec<Staged> = Vec::new();
        let mut slot: HashMap<(String, String), usize> = HashMap::new();
        // (kind, name) -> id holding it after the ops so far (None = freed by this batch).
        let mut names: HashMap<(String, String), Option<String>> = HashMap::new();

        for op in ops {
            let (kind, id) = op.key();
            if kind.is_empty() || id.is_empty() {
                return Err(Rejection::Invalid("kind and id must not be empty".into()));
            }
            let key = (kind.to_owned(), id.to_owned());
            let current: Option<&Object> = match slot.get(&key) {
                Some(&i) => staged[i].value.as_ref(),
                None => self.get(kind, id),
            };
            let (kind, id) = key.clone();
            let value = match op {
                Op::Put {
                    name, expect, data, ..
                } => {
                    check_expect(&kind, &id, expect, current)?;
                    if let Some(n) = &name {
                        if n.is_empty() {
                            return Err(Rejection::Invalid("name must not be empty".into()));
                        }
                        let name_key = (kind.clone(), n.clone());
                        let holder = match names.get(&name_key) {
                            Some(h) => h.clone(),
                            None => self
                                .kinds
                                .get(&kind)
                                .and_then(|k| k.by_name.get(n))
                                .cloned(),
                        };
                        if holder.is_some_and(|h| h != id) {
                            return Err(Rejection::NameConflict {
                                kind: kind.clone(),
                                name: n.clone(),
                            });
                        }
                    }
                    if let Some(old) = current.and_then(|c| c.name.as_ref()) {
                        if Some(old) != name.as_ref() {
                            names.insert((kind.clone(), old.clone()), None);
                        }
                    }
                    if let Some(n) = &name {
                        names.insert((kind.clone(), n.clone()), Some(id.clone()));
                    }
                    Some(Object {
                        kind: kind.clone(),
                        id: id.clone(),
                        name,
                        version: index,
                        data: Arc::from(data),
                    })
                }
                Op::Delete { expect, .. } => {
                    match (current, expect) {
                        (None, Expect::Any) => {}
                        (None, _) => return Err(Rejection::NotFound { kind, id }),
                        (Some(_), Expect::Absent) => {
                            return Err(Rejection::AlreadyExists { kind, id });
                        }
                        (Some(c), Expect::Version(v)) if c.version != v => {
                            return Err(Rejection::Conflict {
                                kind,
                                id,
                                expected: v,
                                actual: c.version,
                            });
                        }
                        (Some(_), _) => {}
                    }
                    if let Some(old) = current.and_then(|c| c.name.as_ref()) {
                        names.insert((kind.clone(), old.clone()), None);
                    }
                    None
                }
            };
            match slot.get(&key) {
                Some(&i) => staged[i].value = value,
                None => {
                    slot.insert(key, staged.len());
                    staged.push(Staged { kind, id, value });
                }
            }
        }
        Ok(staged)
    }
}

/// Checks a Put's precondition against the current object.
fn check_expect(
    kind: &str,
    id: &str,
    expect: Expect,
    current: Option<&Object>,
) -> Result<(), Rejection> {
    match (expect, current) {
        (Expect::Any, _) => Ok(()),
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(_)) => Err(Rejection::AlreadyExists {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }),
        (Expect::Version(_), None) => Err(Rejection::NotFound {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }),
        (Expect::Version(v), Some(c)) if c.version != v => Err(Rejection::Conflict {
            kind: kind.to_owned(),
            id: id.to_owned(),
            expected: v,
            actual: c.version,
        }),
        (Expect::Version(_), Some(_)) => Ok(()),
    }
}

/// The changes that turn `old` into `new`, for the watch event sent when a snapshot replaces
/// the whole state.
pub(crate) fn diff(old: &Objects, new: &Objects) -> Vec<Change> {
    let mut changes = Vec::new();
    for obj in new.iter() {
        let action = match old.get(&obj.kind, &obj.id) {
            None => Action::Created,
            Some(prev) if prev != obj => Action::Updated,
            Some(_) => continue,
        };
        changes.push(Change {
            kind: obj.kind.clone(),
            id: obj.id.clone(),
            action,
            object: Some(obj.clone()),
        });
    }
    for obj in old.iter() {
        if new.get(&obj.kind, &obj.id).is_none() {
            changes.push(Change {
                kind: obj.kind.clone(),
                id: obj.id.clone(),
                action: Action::Deleted,
                object: Some(obj.clone()),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kind: &str, id: &str, name: Option<&str>, expect: Expect) -> Op {
        Op::Put {
            kind: kind.into(),
            id: id.into(),
            name: name.map(Into::into),
            expect,
            data: b"{}".to_vec(),
        }
    }

    #[test]
    fn rename_and_reuse_name_in_one_batch() {
        let mut s = Objects::default();
        s.apply_batch(1, vec![put("svc", "a", Some("x"), Expect::Absent)])
            .unwrap();
        // a: x -> y, b takes x, in either order.
        s.apply_batch(
            2,
            vec![
                put("svc", "b", Some("x"), Expect::Absent),
                put("svc", "a", Some("y"), Expect::Version(1)),
            ],
        )
        .unwrap_err();
        s.apply_batch(
            2,
            vec![
                put("svc", "a", Some("y"), Expect::Version(1)),
                put("svc", "b", Some("x"), Expect::Absent),
            ],
        )
        .unwrap();
        assert_eq!(s.find_by_name("svc", "x").unwrap().id, "b");
        assert_eq!(s.find_by_name("svc", "y").unwrap().id, "a");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn create_then_delete_in_one_batch_is_no_change() {
        let mut s = Objects::default();
        let changes = s
            .apply_batch(
                5,
                vec![
                    put("t", "1", Some("n"), Expect::Absent),
                    Op::Delete {
                        kind: "t".into(),
                        id: "1".into(),
                        expect: Expect::Version(5),
                    },
                ],
            )
            .unwrap();
        assert!(changes.is_empty());
        assert_eq!(s.len(), 0);
        assert!(s.find_by_name("t", "n").is_none());
    }

    #[test]
    fn diff_reports_all_three_actions() {
        let mut a = Objects::default();
        a.apply_batch(
            1,
            vec![
                put("k", "keep", None, Expect::Any),
                put("k", "gone", None, Expect::Any),
            ],
        )
        .unwrap();
        let mut b = a.clone();
        b.apply_batch(
            2,
            vec![
                put("k", "keep", None, Expect::Any),
                put("k", "new", None, Expect::Any),
                Op::Delete {
                    kind: "k".into(),
                    id: "gone".into(),
                    expect: Expect::Any,
                },
            ],
        )
        .unwrap();
        let mut actions: Vec<_> = diff(&a, &b).into_iter().map(|c| (c.id, c.action)).collect();
        actions.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            actions,
            vec![
                ("gone".to_string(), Action::Deleted),
                ("keep".to_string(), Action::Updated),
                ("new".to_string(), Action::Created),
            ]
        );
    }
}
