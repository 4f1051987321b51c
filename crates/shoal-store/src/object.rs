//! The objects the store holds, the operations that change them and the change events it emits.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One stored object: the unit every read returns and every write versions.
#[derive(Clone, PartialEq, Eq)]
pub struct Object {
    /// Object type (`service`, `task`, `node`, ...), the first half of the key.
    pub kind: String,
    /// Identifier, unique within `kind`, the second half of the key.
    pub id: String,
    /// Optional unique-per-kind name, so lookups by name are cheap and names cannot collide.
    pub name: Option<String>,
    /// Raft log index of the batch that last wrote the object (Docker's `Version.Index`).
    pub version: u64,
    /// The object's JSON document, shared so reads never copy it.
    pub data: Arc<[u8]>,
}

/// The precondition a write places on the object's current version (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// No precondition: create or overwrite.
    Any,
    /// The object must not exist yet (create).
    Absent,
    /// The object must exist at exactly this version (update/delete of what the caller read).
    Version(u64),
}

/// One change inside an atomic batch given to [`crate::Store::write`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates or replaces an object.
    Put {
        /// Object type.
        kind: String,
        /// Object identifier within `kind`.
        id: String,
        /// Unique-per-kind name, if the object has one.
        name: Option<String>,
        /// Precondition on the current version.
        expect: Expect,
        /// The new JSON document.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Removes an object.
    Delete {
        /// Object type.
        kind: String,
        /// Object identifier within `kind`.
        id: String,
        /// Precondition on the current version.
        expect: Expect,
    },
}

/// A document's size instead of its bytes: documents hold secrets and the CA's key, and a
/// `{:?}` in a log line or a failed assertion must not print them.
struct Size(usize);

impl std::fmt::Debug for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("data", &Size(self.data.len()))
            .finish()
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put {
                kind,
                id,
                name,
                expect,
                data,
            } => f
                .debug_struct("Put")
                .field("kind", kind)
                .field("id", id)
                .field("name", name)
                .field("expect", expect)
                .field("data", &Size(data.len()))
                .finish(),
            Op::Delete { kind, id, expect } => f
                .debug_struct("Delete")
                .field("kind", kind)
                .field("id", id)
                .field("expect", expect)
                .finish(),
        }
    }
}

impl Op {
    /// The `(kind, id)` the operation targets, for validation and error messages.
    pub fn key(&self) -> (&str, &str) {
        match self {
            Op::Put { kind, id, .. } | Op::Delete { kind, id, .. } => (kind, id),
        }
    }
}

/// What happened to one object in an applied batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The object did not exist before the batch.
    Created,
    /// The object existed and was replaced.
    Updated,
    /// The object was removed.
    Deleted,
}

/// One object's change in a [`ChangeSet`], so watchers can react without re-reading the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Object type.
    pub kind: String,
    /// Object identifier.
    pub id: String,
    /// Created, updated or deleted.
    pub action: Action,
    /// The object after the change; for `Deleted`, the object as it was just before deletion.
    pub object: Option<Object>,
}

/// Every change made by one applied batch (or by installing a snapshot), sent on the watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    /// The raft log index that made these changes (the new version of written objects).
    pub index: u64,
    /// The changes, one per object touched, in the order the batch first touched them.
    pub changes: Vec<Change>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_document() {
        let doc = br#"{"Spec":{"Data":"aHVudGVyMg=="}}"#.to_vec();
        let put = Op::Put {
            kind: "secret".into(),
            id: "s1".into(),
            name: Some("db_password".into()),
            expect: Expect::Absent,
            data: doc.clone(),
        };
        let obj = Object {
            kind: "secret".into(),
            id: "s1".into(),
            name: Some("db_password".into()),
            version: 3,
            data: doc.clone().into(),
        };
        let set = ChangeSet {
            index: 3,
            changes: vec![Change {
                kind: "secret".into(),
                id: "s1".into(),
                action: Action::Created,
                object: Some(obj.clone()),
            }],
        };
        let as_bytes = format!("{doc:?}");
        let as_bytes = as_bytes.trim_matches(['[', ']']);
        for printed in [format!("{put:?}"), format!("{obj:#?}"), format!("{set:?}")] {
            assert!(printed.contains("db_password"), "{printed}");
            assert!(
                !printed.contains("aHVudGVyMg") && !printed.contains(as_bytes),
                "{printed}"
            );
        }
    }
}
