//! Caches of state that other nodes can change.
//!
//! An entry is tagged with the version the database gave it (a policy's `policy_version`, a
//! secret's `state_version`, both advanced by every committed change). A read asks the
//! database for the current version, in the same query that would load the value, and uses the
//! cached value only when the versions are equal; otherwise the database returns the value and
//! it replaces the entry. So such a read saves decoding (and, for a secret, reading every
//! version row), and cannot serve what another node has changed or revoked. Two uses take an
//! entry without asking: a first decision from what the node remembers (`Store::remembered`),
//! which ends only in a commit that holds its grant to the committed state, and the batch's own
//! read, which sends the version along in the same way. Revocations of handles and credentials
//! are never cached. (This relies on the database's history only moving forward: after
//! restoring it from a backup, restart the nodes.)

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

/// Most entries kept; past this the cache starts over (a miss costs one decode, not a hazard).
const CAPACITY: usize = 65_536;

/// Values tagged with the database version they were read at.
pub(crate) struct VersionedCache<K, V> {
    entries: RwLock<HashMap<K, (u64, V)>>,
}

impl<K, V> Default for VersionedCache<K, V> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> VersionedCache<K, V> {
    /// The version of the cached entry, to send with the query as "I have this one".
    pub(crate) fn version(&self, key: &K) -> Option<u64> {
        self.entries.read().ok()?.get(key).map(|(v, _)| *v)
    }

    /// The cached entry with its version, whatever the database holds now: for a read that
    /// sends the version along and uses the value only if the database answers "unchanged",
    /// or for a decision whose commit holds it to the committed state.
    pub(crate) fn entry(&self, key: &K) -> Option<(u64, V)> {
        self.entries.read().ok()?.get(key).cloned()
    }

    /// The cached value, only if it is exactly at `version` (the one the database just gave).
    pub(crate) fn get_at(&self, key: &K, version: u64) -> Option<V> {
        let entries = self.entries.read().ok()?;
        entries
            .get(key)
            .filter(|(v, _)| *v == version)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value`, read at `version`. The last read wins: an older one only costs a miss,
    /// and a database restored to an earlier state is followed rather than fought.
    pub(crate) fn put(&self, key: K, version: u64, value: V) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (version, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_version_the_database_gave_is_served() {
        let cache = VersionedCache::<&str, &str>::default();
        assert_eq!(cache.version(&"k"), None);
        cache.put("k", 3, "three");
        assert_eq!(cache.version(&"k"), Some(3));
        assert_eq!(cache.get_at(&"k", 3), Some("three"));
        assert_eq!(cache.get_at(&"k", 4), None, "the database moved on");
        cache.put("k", 4, "four");
        assert_eq!(cache.get_at(&"k", 3), None);
        assert_eq!(cache.get_at(&"k", 4), Some("four"));
    }
}
