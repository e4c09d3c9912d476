//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a user's
//! write is on disk before it is acknowledged and survives `kill -9` and power loss. The
//! controller's derived writes (`apply_derived`, `update_statuses`) commit with
//! `synchronous=NORMAL`: in the WAL at once (they survive `kill -9`), fsynced with the next
//! `FULL` commit or checkpoint; a power loss may lose the newest of them, which the
//! controller recomputes when it starts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;
use sluice_crds::Kind;
use tokio::sync::broadcast;

use super::{ApplyOutcome, Change, Event, MAX_EVENTS, Store, StoreError};

/// A `Store` in a SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: broadcast::Sender<Change>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, namespace, name, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('resource_version', 0);
";

impl SqliteStore {
    /// Opens (creating if needed) `state.db` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Open {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join("state.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            changes,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn notify(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            // No receiver is fine: nobody is watching yet.
            let _ = self.changes.send(change);
        }
    }
}

fn next_version(tx: &Transaction) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = 'resource_version' RETURNING value",
        [],
        |row| row.get(0),
    )?)
}

fn read(tx: &Connection, kind: Kind, ns: &str, name: &str) -> Result<Option<Value>, StoreError> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            params![kind.name(), ns, name],
            |row| row.get(0),
        )
        .optional()?;
    body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Malformed(e.to_string())))
        .transpose()
}

/// An object's `metadata.resourceVersion` ("" when absent).
fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Reads the stored object for a write made against resourceVersion `have`: `NotFound` when
/// it is gone, `Conflict` when it has changed since.
fn read_at_version(
    tx: &Connection,
    kind: Kind,
    ns: &str,
    name: &str,
    have: String,
) -> Result<Value, StoreError> {
    let current = read(tx, kind, ns, name)?.ok_or_else(|| StoreError::NotFound {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
    })?;
    let stored = resource_version(&current);
    if stored != have {
        return Err(StoreError::Conflict {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
            have,
            stored,
        });
    }
    Ok(current)
}

fn write(tx: &Transaction, kind: Kind, obj: &mut Value) -> Result<(), StoreError> {
    let version = next_version(tx)?;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Malformed("object has no metadata".into()))?;
    meta.insert("resourceVersion".into(), Value::String(version.to_string()));
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let uid = meta
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    tx.execute(
        "INSERT INTO objects (kind, namespace, name, uid, resource_version, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (kind, namespace, name) DO UPDATE
         SET uid = excluded.uid, resource_version = excluded.resource_version, body = excluded.body",
        params![kind.name(), ns, name, uid, version, obj.to_string()],
    )?;
    Ok(())
}

fn key_of(obj: &Value) -> Result<(String, String), StoreError> {
    let meta = &obj["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::Malformed("metadata.name is required".into()))?;
    let ns = meta["namespace"].as_str().unwrap_or("default");
    Ok((ns.to_owned(), name.to_owned()))
}

/// Whether the object's controlling owner (same namespace) still exists with that uid.
/// Objects without one always pass.
fn owner_exists(tx: &Transaction, ns: &str, obj: &Value) -> Result<bool, StoreError> {
    let Some(owner) = obj["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
    else {
        return Ok(true);
    };
    let (Some(kind), Some(name), Some(uid)) = (
        owner["kind"].as_str(),
        owner["name"].as_str(),
        owner["uid"].as_str(),
    ) else {
        return Ok(true);
    };
    let stored: Option<String> = tx
        .query_row(
            "SELECT uid FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            params![kind, ns, name],
            |row| row.get(0),
        )
        .optional()?;
    Ok(stored.as_deref() == Some(uid))
}

/// Inserts events (stamped now) and drops those beyond the newest `MAX_EVENTS`.
fn insert_events(tx: &Transaction, events: Vec<Event>) -> Result<(), StoreError> {
    for mut e in events {
        e.time = now_rfc3339();
        let body = serde_json::to_string(&e).map_err(|e| StoreError::Malformed(e.to_string()))?;
        tx.execute(
            "INSERT INTO events (kind, namespace, name, body) VALUES (?1, ?2, ?3, ?4)",
            params![e.kind.name(), e.namespace, e.name, body],
        )?;
    }
    tx.execute(
        "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
        params![MAX_EVENTS],
    )?;
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Merges an applied object into the stored one. Returns the outcome and the new object.
fn merge(existing: Option<Value>, mut applied: Value) -> (ApplyOutcome, Value) {
    let Some(mut current) = existing else {
        let meta = &mut applied["metadata"];
        meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        meta["generation"] = Value::from(1);
        meta["creationTimestamp"] = Value::String(now_rfc3339());
        if let Some(obj) = applied.as_object_mut() {
            obj.remove("status");
        }
        return (ApplyOutcome::Created, applied);
    };
    let spec_changed = current.get("spec") != applied.get("spec");
    let mut changed = spec_changed;
    for field in ["labels", "annotations", "ownerReferences"] {
        let new = applied["metadata"].get(field).cloned();
        if current["metadata"].get(field) != new.as_ref() {
            changed = true;
            match new {
                Some(v) => current["metadata"][field] = v,
                None => {
                    if let Some(m) = current["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
    }
    if spec_changed {
        current["spec"] = applied["spec"].take();
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        current["metadata"]["generation"] = Value::from(generation);
    }
    let outcome = if changed {
        ApplyOutcome::Configured
    } else {
        ApplyOutcome::Unchanged
    };
    (outcome, current)
}

/// Applies `objects` in one transaction: the outcome of each, the changes to announce,
/// and each object as stored afterwards (`None` when its owner is gone).
#[allow(clippy::type_complexity)]
fn apply_in(
    c: &mut Connection,
    objects: Vec<(Kind, Value)>,
) -> Result<(Vec<ApplyOutcome>, Vec<Change>, Vec<Option<Value>>), StoreError> {
    let tx = c.transaction()?;
    let mut outcomes = Vec::with_capacity(objects.len());
    let mut stored = Vec::with_capacity(objects.len());
    let mut changes = Vec::new();
    for (kind, applied) in objects {
        let (ns, name) = key_of(&applied)?;
        if !owner_exists(&tx, &ns, &applied)? {
            outcomes.push(ApplyOutcome::OwnerGone);
            stored.push(None);
            continue;
        }
        let existing = read(&tx, kind, &ns, &name)?;
        let (outcome, mut merged) = merge(existing, applied);
        if outcome != ApplyOutcome::Unchanged {
            write(&tx, kind, &mut merged)?;
            changes.push(Change {
                kind,
                namespace: ns,
                name,
            });
        }
        outcomes.push(outcome);
        stored.push(Some(merged));
    }
    tx.commit()?;
    Ok((outcomes, changes, stored))
}

/// Runs `f` (its own transactions) with `synchronous=NORMAL`, for derived writes (see
/// `Store::apply_derived`): in WAL mode such a commit is in the WAL, so it survives a crash
/// of this process, but it is not fsynced until the next `FULL` commit or checkpoint, so a
/// power loss may lose it. User writes stay `FULL`: the level is restored before returning.
fn relaxed<T>(
    c: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    c.pragma_update(None, "synchronous", "NORMAL")?;
    let out = f(c);
    let restored = c.pragma_update(None, "synchronous", "FULL");
    let out = out?;
    restored?;
    Ok(out)
}

impl Store for SqliteStore {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |c| read(c, kind, &ns, &name)).await
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        let ns = namespace.map(str::to_owned);
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT body FROM objects WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2)
                 ORDER BY namespace, name",
            )?;
            let rows = stmt.query_map(params![kind.name(), ns], |row| row.get::<_, String>(0))?;
            rows.map(|body| {
                serde_json::from_str(&body?).map_err(|e| StoreError::Malformed(e.to_string()))
            })
            .collect()
        })
        .await
    }

    async fn list_versions(&self, kind: Kind) -> Result<Vec<(String, String, String)>, StoreError> {
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT namespace, name, resource_version FROM objects WHERE kind = ?1
                 ORDER BY namespace, name",
            )?;
            let rows = stmt.query_map(params![kind.name()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?.to_string(),
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn apply(&self, objects: Vec<(Kind, Value)>) -> Result<Vec<ApplyOutcome>, StoreError> {
        let (outcomes, changes, _) = self.blocking(move |c| apply_in(c, objects)).await?;
        self.notify(changes);
        Ok(outcomes)
    }

    async fn apply_derived(
        &self,
        objects: Vec<(Kind, Value)>,
    ) -> Result<Vec<Option<Value>>, StoreError> {
        let (_, changes, stored) = self
            .blocking(move |c| relaxed(c, |c| apply_in(c, objects)))
            .await?;
        self.notify(changes);
        Ok(stored)
    }

    async fn update(&self, kind: Kind, object: Value) -> Result<(ApplyOutcome, Value), StoreError> {
        let (ns, name) = key_of(&object)?;
        let have = resource_version(&object);
        let (n2, name2) = (ns.clone(), name.clone());
        let (outcome, updated) = self
            .blocking(move |c| {
                let tx = c.transaction()?;
                let current = read_at_version(&tx, kind, &n2, &name2, have)?;
                let (outcome, mut merged) = merge(Some(current), object);
                if outcome != ApplyOutcome::Unchanged {
                    write(&tx, kind, &mut merged)?;
                }
                tx.commit()?;
                Ok((outcome, merged))
            })
            .await?;
        if outcome != ApplyOutcome::Unchanged {
            self.notify([Change {
                kind,
                namespace: ns,
                name,
            }]);
        }
        Ok((outcome, updated))
    }

    async fn update_status(
        &self,
        kind: Kind,
        object: &Value,
        status: Value,
    ) -> Result<Value, StoreError> {
        let (ns, name) = key_of(object)?;
        let have = resource_version(object);
        let (n2, name2) = (ns.clone(), name.clone());
        let updated = self
            .blocking(move |c| {
                let tx = c.transaction()?;
                let mut current = read_at_version(&tx, kind, &n2, &name2, have)?;
                current["status"] = status;
                write(&tx, kind, &mut current)?;
                tx.commit()?;
                Ok(current)
            })
            .await?;
        self.notify([Change {
            kind,
            namespace: ns,
            name,
        }]);
        Ok(updated)
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.blocking(move |c| {
            let tx = c.transaction()?;
            insert_events(&tx, events)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn events(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Event>, StoreError> {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT body FROM events WHERE kind = ?1 AND namespace = ?2 AND name = ?3 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![kind.name(), ns, name], |row| row.get::<_, String>(0))?;
            rows.map(|body| {
                serde_json::from_str(&body?).map_err(|e| StoreError::Malformed(e.to_string()))
            })
            .collect()
        })
        .await
    }

    async fn update_statuses(
        &self,
        writes: Vec<(Kind, Value, Value)>,
        events: Vec<Event>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let (results, changes) = self
            .blocking(move |c| {
                relaxed(c, |c| {
                    let tx = c.transaction()?;
                    if !events.is_empty() {
                        insert_events(&tx, events)?;
                    }
                    let mut results = Vec::with_capacity(writes.len());
                    let mut changes = Vec::new();
                    for (kind, object, status) in writes {
                        let (ns, name) = key_of(&object)?;
                        let have = resource_version(&object);
                        let mut current = match read_at_version(&tx, kind, &ns, &name, have) {
                            Ok(current) => current,
                            Err(
                                e @ (StoreError::NotFound { .. } | StoreError::Conflict { .. }),
                            ) => {
                                results.push(Err(e));
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        current["status"] = status;
                        write(&tx, kind, &mut current)?;
                        results.push(Ok(()));
                        changes.push(Change {
                            kind,
                            namespace: ns,
                            name,
                        });
                    }
                    tx.commit()?;
                    Ok((results, changes))
                })
            })
            .await?;
        self.notify(changes);
        Ok(results)
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, StoreError> {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        let deleted = self
            .blocking(move |c| {
                let tx = c.transaction()?;
                let root = read(&tx, kind, &ns, &name)?.ok_or_else(|| StoreError::NotFound {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                })?;
                let mut deleted = Vec::new();
                let mut pending = vec![(
                    kind,
                    name,
                    root["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )];
                while let Some((kind, name, uid)) = pending.pop() {
                    tx.execute(
                        "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                        params![kind.name(), ns, name],
                    )?;
                    deleted.push(Change {
                        kind,
                        namespace: ns.clone(),
                        name,
                    });
                    // Owned objects live in the owner's namespace.
                    let mut stmt = tx.prepare_cached(
                        "SELECT kind, name, uid, body FROM objects WHERE namespace = ?1",
                    )?;
                    let rows = stmt.query_map(params![ns], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    })?;
                    for row in rows {
                        let (k, n, child_uid, body) = row?;
                        let body: Value = serde_json::from_str(&body)
                            .map_err(|e| StoreError::Malformed(e.to_string()))?;
                        let owned = body["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()));
                        let child_kind = Kind::ALL.into_iter().find(|x| x.name() == k);
                        if let (true, Some(child_kind)) = (owned, child_kind) {
                            pending.push((child_kind, n, child_uid));
                        }
                    }
                }
                tx.commit()?;
                Ok(deleted)
            })
            .await?;
        self.notify(deleted.clone());
        Ok(deleted)
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn isvc(name: &str, min: i64) -> Value {
        json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"predictor": {"minReplicas": min}}
        })
    }

    #[tokio::test]
    async fn apply_versions_and_generations() {
        let dir = temp_dir("apply");
        let store = SqliteStore::open(&dir).unwrap();
        let mut watch = store.watch();
        let out = store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        assert_eq!(out, [ApplyOutcome::Created]);
        assert_eq!(watch.recv().await.unwrap().name, "a");
        let out = store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        assert_eq!(out, [ApplyOutcome::Unchanged]);
        let out = store
            .apply(vec![(Kind::InferenceService, isvc("a", 0))])
            .await
            .unwrap();
        assert_eq!(out, [ApplyOutcome::Configured]);
        let got = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got["metadata"]["generation"], 2);
        assert_eq!(got["spec"]["predictor"]["minReplicas"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn synchronous(store: &SqliteStore) -> i64 {
        let conn = store.conn.lock().unwrap();
        conn.pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn derived_writes_return_what_is_stored_and_leave_user_writes_full() {
        const FULL: i64 = 2;
        let dir = temp_dir("derived");
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(synchronous(&store), FULL);
        let mut watch = store.watch();
        let stored = store
            .apply_derived(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        let a = stored[0].clone().unwrap();
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(watch.recv().await.unwrap().name, "a");
        assert_eq!(
            Some(&a),
            store
                .get(Kind::InferenceService, "default", "a")
                .await
                .unwrap()
                .as_ref()
        );
        assert_eq!(synchronous(&store), FULL);
        // A failed derived write restores the level too.
        let nameless = json!({"metadata": {}, "spec": {}});
        assert!(
            store
                .apply_derived(vec![(Kind::InferenceService, nameless)])
                .await
                .is_err()
        );
        assert_eq!(synchronous(&store), FULL);
        store
            .update_statuses(
                vec![(
                    Kind::InferenceService,
                    a.clone(),
                    json!({"observedGeneration": 1}),
                )],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(synchronous(&store), FULL);
        // Reopened (as after kill -9): derived writes are there.
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        let a = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a["status"]["observedGeneration"], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_child_of_a_deleted_owner_is_not_resurrected() {
        let dir = temp_dir("owner");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        let owner = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        let child = |uid: &Value| {
            json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                   "metadata": {"name": "a-predictor", "namespace": "default",
                     "ownerReferences": [{"apiVersion": "serving.kserve.io/v1beta1",
                       "kind": "InferenceService", "name": "a", "uid": uid, "controller": true}]},
                   "spec": {}})
        };
        let uid = owner["metadata"]["uid"].clone();
        let out = store
            .apply(vec![(Kind::Service, child(&uid))])
            .await
            .unwrap();
        assert_eq!(out, [ApplyOutcome::Created]);
        store
            .delete(Kind::InferenceService, "default", "a")
            .await
            .unwrap();
        // A controller pass that read the owner before it was deleted writes the child again.
        let out = store
            .apply(vec![(Kind::Service, child(&uid))])
            .await
            .unwrap();
        assert_eq!(out, [ApplyOutcome::OwnerGone]);
        assert!(store.list(Kind::Service, None).await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn events_are_kept_per_object_and_survive_reopening() {
        let dir = temp_dir("events");
        let store = SqliteStore::open(&dir).unwrap();
        let event = |name: &str, reason: &str| Event {
            kind: Kind::Configuration,
            namespace: "default".into(),
            name: name.into(),
            type_: "Normal".into(),
            reason: reason.into(),
            message: format!("{reason} {name}"),
            time: String::new(),
        };
        store
            .record_events(vec![
                event("a", "Created"),
                event("b", "Created"),
                event("a", "Deleted"),
            ])
            .await
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        let got = store
            .events(Kind::Configuration, "default", "a")
            .await
            .unwrap();
        let reasons: Vec<&str> = got.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Created", "Deleted"]);
        assert!(!got[0].time.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn statuses_and_events_are_written_together_and_a_stale_write_alone_fails() {
        let dir = temp_dir("statuses");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .apply(vec![
                (Kind::InferenceService, isvc("a", 1)),
                (Kind::InferenceService, isvc("b", 1)),
            ])
            .await
            .unwrap();
        let a = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        let mut stale = store
            .get(Kind::InferenceService, "default", "b")
            .await
            .unwrap()
            .unwrap();
        stale["metadata"]["resourceVersion"] = json!("0");
        let event = Event {
            kind: Kind::InferenceService,
            namespace: "default".into(),
            name: "a".into(),
            type_: "Normal".into(),
            reason: "Ready".into(),
            message: "became ready".into(),
            time: String::new(),
        };
        let results = store
            .update_statuses(
                vec![
                    (Kind::InferenceService, a, json!({"x": 1})),
                    (Kind::InferenceService, stale, json!({"x": 2})),
                ],
                vec![event],
            )
            .await
            .unwrap();
        assert!(results[0].is_ok());
        assert!(
            matches!(results[1], Err(StoreError::Conflict { .. })),
            "{results:?}"
        );
        let a = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a["status"], json!({"x": 1}));
        let events = store
            .events(Kind::InferenceService, "default", "a")
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Ready");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_writers_one_wins_the_other_gets_a_conflict() {
        let dir = temp_dir("update");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        let read = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        // Two writers edit the same read.
        let (mut first, mut second) = (read.clone(), read);
        first["spec"]["predictor"]["minReplicas"] = json!(0);
        second["spec"]["predictor"]["minReplicas"] = json!(5);
        let (out, stored) = store.update(Kind::InferenceService, first).await.unwrap();
        assert_eq!(out, ApplyOutcome::Configured);
        assert_eq!(stored["metadata"]["generation"], 2);
        let err = store
            .update(Kind::InferenceService, second)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        let now = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now["spec"]["predictor"]["minReplicas"], 0);
        let mut missing = now.clone();
        missing["metadata"]["name"] = json!("nope");
        assert!(matches!(
            store.update(Kind::InferenceService, missing).await,
            Err(StoreError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stale_status_write_is_a_conflict_and_status_survives_apply() {
        let dir = temp_dir("conflict");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        let read = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        store
            .update_status(Kind::InferenceService, &read, json!({"x": 1}))
            .await
            .unwrap();
        let err = store
            .update_status(Kind::InferenceService, &read, json!({"x": 2}))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        store
            .apply(vec![(Kind::InferenceService, isvc("a", 3))])
            .await
            .unwrap();
        let got = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got["status"], json!({"x": 1}));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn failed_batch_applies_nothing_and_delete_cascades() {
        let dir = temp_dir("batch");
        let store = SqliteStore::open(&dir).unwrap();
        let nameless = json!({"metadata": {}, "spec": {}});
        let err = store
            .apply(vec![
                (Kind::InferenceService, isvc("a", 1)),
                (Kind::InferenceService, nameless),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Malformed(_)));
        assert!(
            store
                .list(Kind::InferenceService, None)
                .await
                .unwrap()
                .is_empty()
        );

        store
            .apply(vec![(Kind::InferenceService, isvc("a", 1))])
            .await
            .unwrap();
        let owner = store
            .get(Kind::InferenceService, "default", "a")
            .await
            .unwrap()
            .unwrap();
        let owned = json!({"metadata": {"name": "a-predictor", "namespace": "default",
            "ownerReferences": [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                 "name": "a", "uid": owner["metadata"]["uid"], "controller": true}]},
            "spec": {}});
        store.apply(vec![(Kind::Service, owned)]).await.unwrap();
        let svc = store
            .get(Kind::Service, "default", "a-predictor")
            .await
            .unwrap()
            .unwrap();
        let rev = json!({"metadata": {"name": "a-predictor-00001", "namespace": "default",
            "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                 "name": "a-predictor", "uid": svc["metadata"]["uid"]}]}, "spec": {}});
        store.apply(vec![(Kind::Revision, rev)]).await.unwrap();
        let deleted = store
            .delete(Kind::InferenceService, "default", "a")
            .await
            .unwrap();
        assert_eq!(deleted.len(), 3);
        assert!(store.list(Kind::Revision, None).await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = temp_dir("reopen");
        {
            let store = SqliteStore::open(&dir).unwrap();
            store
                .apply(vec![(Kind::InferenceService, isvc("a", 1))])
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        let got = store
            .list(Kind::InferenceService, Some("default"))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        store
            .apply(vec![(Kind::InferenceService, isvc("b", 1))])
            .await
            .unwrap();
        let b = store
            .get(Kind::InferenceService, "default", "b")
            .await
            .unwrap()
            .unwrap();
        let a = &got[0];
        assert!(
            b["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > a["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
