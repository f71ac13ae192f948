//! Setpoints that survive restarts: the state file of `persist = "restore"` and
//! `persist = "remember"` parameters.
//!
//! The file is JSON (`{"version": 1, "values": {"module:parameter": value}}`), written
//! by one thread shortly after each successful change (debounced by `write_delay`), and
//! always atomically: a temporary file in the same directory, fsync, rename over the
//! old one, fsync of the directory. A process killed at any moment leaves either the
//! old or the new file, never half of one. A missing file is a first start; a corrupt
//! one is reported, kept aside as `<file>.corrupt` and ignored — never fatal.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a state file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: not written: it would be {bytes} bytes, more than the {MAX_STATE_BYTES} a start reads back (the previous file stays)")]
    TooLarge { path: String, bytes: usize },
}

/// How a parameter is persisted (`persist` of a `[[module.parameter]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persist {
    #[default]
    No,
    /// The last written value is written back to the device at start and after
    /// every reconnect.
    Restore,
    /// The last written value is shown until the device is read, not written.
    Remember,
}

impl Persist {
    /// The `persist` key of a parameter; the error names it. Only a parameter that
    /// clients can write has a value to keep.
    pub fn parse(
        key: &str,
        text: Option<&str>,
        writable: bool,
    ) -> Result<Persist, crate::ConfigError> {
        if text.is_some() && !writable {
            return Err(crate::ConfigError::invalid(
                key,
                "only a writable parameter can be persisted",
            ));
        }
        match text {
            None => Ok(Persist::No),
            Some("restore") => Ok(Persist::Restore),
            Some("remember") => Ok(Persist::Remember),
            Some(other) => Err(crate::ConfigError::invalid(
                key,
                format!("{other:?} is not \"restore\" or \"remember\""),
            )),
        }
    }
}

struct Shared {
    path: PathBuf,
    values: Mutex<Map<String, Value>>,
}

/// The state of all persisted parameters, shared by the devices of a gateway. Cheap
/// to clone.
#[derive(Clone)]
pub struct StateStore {
    shared: Arc<Shared>,
    wake: mpsc::Sender<()>,
}

impl StateStore {
    /// Load `path` (missing or corrupt: empty, with a warning) and start the writer.
    pub fn open(path: &Path, write_delay: Duration) -> StateStore {
        let values = match load(path) {
            Ok(Some(values)) => {
                tracing::info!(file = %path.display(), values = values.len(), "state file loaded");
                values
            }
            Ok(None) => {
                tracing::info!(file = %path.display(), "no state file yet; it is written after the first change of a persisted parameter");
                Map::new()
            }
            // Not a file to replace (a device, a directory): left alone; the writes
            // fail and say so.
            Err(e @ StateError::NotRegular { .. }) => {
                tracing::warn!("state file ignored: {e}");
                Map::new()
            }
            Err(e) => {
                let aside = corrupt_name(path);
                let kept = std::fs::rename(path, &aside).is_ok();
                tracing::warn!(kept_as = %aside.display(), kept, "state file ignored: {e}");
                Map::new()
            }
        };
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            values: Mutex::new(values),
        });
        let (wake, signals) = mpsc::channel::<()>();
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                // Each signal: wait a little for more changes, then write them all.
                while signals.recv().is_ok() {
                    std::thread::sleep(write_delay);
                    while signals.try_recv().is_ok() {}
                    writer.write_now();
                }
                writer.write_now();
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the state writer: {e}");
        }
        StateStore { shared, wake }
    }

    /// The stored value of `module:parameter`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.lock().get(key).cloned()
    }

    /// Remember a value; the file follows shortly.
    pub fn set(&self, key: &str, value: Value) {
        let changed = self.lock().insert(key.to_owned(), value.clone()) != Some(value);
        if changed {
            let _ = self.wake.send(());
        }
    }

    /// Forget a value (it no longer fits its parameter).
    pub fn remove(&self, key: &str) {
        if self.lock().remove(key).is_some() {
            let _ = self.wake.send(());
        }
    }

    /// Write the file now (at shutdown).
    pub fn flush(&self) {
        self.shared.write_now();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map<String, Value>> {
        self.shared.values.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    fn write_now(&self) {
        let snapshot = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(e) = write_atomically(&self.path, &json!({"version": 1, "values": snapshot})) {
            tracing::error!("state file not written: {e}");
        }
    }
}

fn corrupt_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".corrupt");
    PathBuf::from(name)
}

/// The largest state file read. The gateway writes one value per persisted parameter,
/// far below this; a larger file is not one of ours (or was damaged) and is set aside,
/// so that a start never reads without end.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// The values of a state file; `None` if there is none.
pub fn load(path: &Path) -> Result<Option<Map<String, Value>>, StateError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let io = |source| StateError::Io {
        path: shown.clone(),
        source,
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: shown.clone(),
        reason,
    };
    // Looked at before it is opened: opening a pipe would wait for a writer.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(StateError::NotRegular { path: shown }),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    let json: Value = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    match (json.get("version"), json.get("values")) {
        (Some(v), Some(Value::Object(values))) if v == 1 => Ok(Some(values.clone())),
        _ => Err(corrupt(
            "expected {\"version\": 1, \"values\": {...}}".into(),
        )),
    }
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, json: &Value) -> Result<(), StateError> {
    use std::io::Write;
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let bytes = serde_json::to_vec_pretty(json).map_err(|e| io(std::io::Error::other(e)))?;
    // A file the next start would set aside must not replace one it can read.
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::TooLarge {
            path: path.display().to_string(),
            bytes: bytes.len(),
        });
    }
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_and_corrupt_files_are_set_aside() {
        let dir = std::env::temp_dir().join(format!("secop-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        let store = StateStore::open(&path, Duration::from_millis(1));
        assert_eq!(store.get("T:target"), None);
        store.set("T:target", json!(12.5));
        store.flush();
        let again = StateStore::open(&path, Duration::from_millis(1));
        assert_eq!(again.get("T:target"), Some(json!(12.5)));
        // (a file of its own: the writer threads of the stores above may still write)
        let broken = dir.join("broken.json");
        std::fs::write(&broken, b"{\"version\": 1, \"values\": {\"T:tar").unwrap();
        let fresh = StateStore::open(&broken, Duration::from_millis(1));
        assert_eq!(fresh.get("T:target"), None, "a corrupt file is ignored");
        assert!(corrupt_name(&broken).exists(), "and kept aside");
        assert!(matches!(
            load(&corrupt_name(&broken)),
            Err(StateError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file too large to be ours is not read to its end (a device such as /dev/zero
    /// would never end) and is set aside; a path that is not a regular file is left
    /// alone.
    #[test]
    fn oversized_and_irregular_files_are_refused_without_reading_them_whole() {
        let dir = std::env::temp_dir().join(format!("secop-state-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_STATE_BYTES + 1).unwrap(); // sparse: no disk used
        drop(big);
        assert!(
            matches!(load(&path), Err(StateError::Corrupt { reason, .. }) if reason.contains("larger than"))
        );
        let store = StateStore::open(&path, Duration::from_millis(1));
        assert_eq!(store.get("T:target"), None);
        assert!(corrupt_name(&path).exists(), "set aside");
        assert!(!path.exists());
        assert!(matches!(
            load(Path::new("/dev/zero")),
            Err(StateError::NotRegular { .. })
        ));
        assert!(matches!(load(&dir), Err(StateError::NotRegular { .. })));
        // the gateway never writes a file it would refuse to read back
        let store = StateStore::open(&path, Duration::from_millis(1));
        store.set("T:target", json!(1.5));
        store.flush();
        store.set("label", json!("x".repeat(MAX_STATE_BYTES as usize)));
        store.flush();
        assert_eq!(
            load(&path).unwrap().unwrap().get("T:target"),
            Some(&json!(1.5)),
            "the previous file stays"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
