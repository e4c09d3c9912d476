//! The models a server holds: where each comes from, its load state, and the running
//! executor (queue, batching, instances) and metrics of each loaded one.
//!
//! A model repository folder (`--model-repository DIR`) holds one folder per model; the
//! folder's name is the model's name, and its optional `sluice-model.json` gives the format
//! and batching settings (without it the format is detected: `tokenizer.json` → `bert`,
//! otherwise `sluice-mlp`; a `safetensors` dense model must say so). The settings:
//! `format`, `max_batch_size`, `max_queue_delay_us`, `max_queue`, `instances`, and for text
//! models `max_batch_tokens` (0: the timer batcher); each one absent takes the server's
//! default (its flags).
//!
//! A repository model is read only from inside the folder: a name is one path segment,
//! and the model's folder and every file in it must resolve (symlinks followed) inside the
//! repository, so neither `..` nor a symlink leads a load elsewhere. The repository API's
//! `load` and `unload` act only with model control on (`--model-control-mode explicit`, as
//! Triton's); off by default, since the API is served on the same port as inference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::batch::{BatchConfig, Executor};
use crate::error::InferError;
use crate::formats::load_model;
use crate::metrics::ModelMetrics;
use crate::model::{LoadError, Model};
use crate::storage;

/// Per-model settings file inside a repository folder.
pub const MODEL_SETTINGS_FILE: &str = "sluice-model.json";

/// Where a model comes from and how it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSource {
    /// Model format (`sluice-mlp`, `bert`, `safetensors`).
    pub format: String,
    /// Folder path, `file://` URI or `http(s)://` base URI.
    pub storage_uri: String,
    /// Queueing and batching.
    pub batching: BatchConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSettings {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    max_batch_size: Option<usize>,
    #[serde(default)]
    max_queue_delay_us: Option<u64>,
    #[serde(default)]
    max_queue: Option<usize>,
    #[serde(default)]
    instances: Option<usize>,
    #[serde(default)]
    max_batch_tokens: Option<usize>,
}

/// A model that is being served.
pub struct ServedModel {
    /// The model.
    pub model: Arc<dyn Model>,
    /// Its queue and instances.
    pub executor: Executor,
    /// Its metrics.
    pub metrics: Arc<ModelMetrics>,
    /// How long loading took.
    pub load_time: Duration,
}

enum Slot {
    Loading,
    Ready(Arc<ServedModel>),
    Failed(String),
    Unloaded,
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// `READY`, `LOADING`, `UNAVAILABLE`.
    pub state: String,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The models of one server.
pub struct Repository {
    dir: Option<PathBuf>,
    cache_dir: PathBuf,
    ca_file: Option<PathBuf>,
    defaults: BatchConfig,
    control: ModelControl,
    sources: RwLock<BTreeMap<String, ModelSource>>,
    slots: RwLock<BTreeMap<String, Slot>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// An empty repository; `dir` is the model repository folder, if any; `cache_dir`
    /// holds downloaded models; `defaults` batch models without their own settings.
    pub fn new(dir: Option<PathBuf>, cache_dir: PathBuf, defaults: BatchConfig) -> Self {
        Self {
            dir,
            cache_dir,
            ca_file: None,
            defaults,
            control: ModelControl::None,
            sources: RwLock::new(BTreeMap::new()),
            slots: RwLock::new(BTreeMap::new()),
        }
    }

    /// Trusts also the CA certificates in the PEM file `ca_file` when downloading from
    /// `https://` storage URIs (the system's roots are trusted either way).
    pub fn with_ca_file(mut self, ca_file: Option<PathBuf>) -> Self {
        self.ca_file = ca_file;
        self
    }

    /// Lets the repository API load and unload models ([`ModelControl::Explicit`]).
    pub fn with_control(mut self, control: ModelControl) -> Self {
        self.control = control;
        self
    }

    /// The repository API's `load`: [`Repository::load`] when model control allows it.
    pub async fn load_requested(&self, name: &str) -> Result<(), InferError> {
        self.control.allows("load")?;
        self.load(name).await
    }

    /// The repository API's `unload`: [`Repository::unload`] when model control allows it.
    pub fn unload_requested(&self, name: &str) -> Result<(), InferError> {
        self.control.allows("unload")?;
        self.unload(name)
    }

    /// Registers a model by source (the single-model flags); it is not ready until loaded.
    pub fn add(&self, name: &str, source: ModelSource) {
        write(&self.sources).insert(name.to_owned(), source);
        write(&self.slots)
            .entry(name.to_owned())
            .or_insert(Slot::Loading);
    }

    /// Names of the models in the repository folder (subfolders), sorted.
    pub fn scan(&self) -> Result<Vec<String>, LoadError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The source of `name`: registered, or read from the repository folder.
    fn source(&self, name: &str) -> Result<ModelSource, InferError> {
        if let Some(s) = read(&self.sources).get(name) {
            return Ok(s.clone());
        }
        let Some(dir) = &self.dir else {
            return Err(InferError::ModelNotFound(name.to_owned()));
        };
        let folder = dir.join(name);
        if name.is_empty()
            || name.contains(['/', '\\', '\0'])
            || name.starts_with('.')
            || !folder.is_dir()
        {
            return Err(InferError::ModelNotFound(name.to_owned()));
        }
        let folder = confined(dir, &folder).map_err(|message| {
            tracing::warn!(model = name, "model refused: {message}");
            InferError::Forbidden(format!("model {name:?}: {message}"))
        })?;
        settings_source(&folder, &self.defaults).map_err(|e| InferError::LoadFailed {
            name: name.to_owned(),
            message: sluice_core::error_chain(&e),
        })
    }

    /// Loads (or reloads) `name`, replacing any served version when the new one is ready.
    pub async fn load(&self, name: &str) -> Result<(), InferError> {
        let source = self.source(name)?;
        {
            let mut slots = write(&self.slots);
            if !matches!(slots.get(name), Some(Slot::Ready(_))) {
                slots.insert(name.to_owned(), Slot::Loading);
            }
        }
        let started = Instant::now();
        let (model_name, cache) = (name.to_owned(), self.cache_dir.clone());
        let ca_file = self.ca_file.clone();
        let uri = source.storage_uri.clone();
        let format = source.format.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Box<dyn Model>, LoadError> {
            let dir = storage::fetch_with(&uri, &cache, ca_file.as_deref())?;
            load_model(&format, &model_name, &dir)
        })
        .await;
        let result = match loaded {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(e)) => Err(sluice_core::error_chain(&e)),
            Err(e) => Err(format!("loading task failed: {e}")),
        };
        match result {
            Ok(model) => {
                let model: Arc<dyn Model> = Arc::from(model);
                let metrics = Arc::new(ModelMetrics::default());
                let executor =
                    match Executor::start(name, model.clone(), &source.batching, metrics.clone()) {
                        Ok(executor) => executor,
                        Err(e) => return Err(self.failed(name, e.to_string())),
                    };
                let load_time = started.elapsed();
                tracing::info!(
                    model = name,
                    format = %source.format,
                    load_ms = load_time.as_millis() as u64,
                    "model loaded"
                );
                write(&self.slots).insert(
                    name.to_owned(),
                    Slot::Ready(Arc::new(ServedModel {
                        model,
                        executor,
                        metrics,
                        load_time,
                    })),
                );
                Ok(())
            }
            Err(message) => Err(self.failed(name, message)),
        }
    }

    /// Records that `name` failed to load (a served version stays served).
    fn failed(&self, name: &str, message: String) -> InferError {
        tracing::warn!(model = name, "model failed to load: {message}");
        let mut slots = write(&self.slots);
        if !matches!(slots.get(name), Some(Slot::Ready(_))) {
            slots.insert(name.to_owned(), Slot::Failed(message.clone()));
        }
        InferError::LoadFailed {
            name: name.to_owned(),
            message,
        }
    }

    /// Stops serving `name`; requests already running finish.
    pub fn unload(&self, name: &str) -> Result<(), InferError> {
        let mut slots = write(&self.slots);
        match slots.get(name) {
            None => Err(InferError::ModelNotFound(name.to_owned())),
            Some(_) => {
                slots.insert(name.to_owned(), Slot::Unloaded);
                Ok(())
            }
        }
    }

    /// The served model `name`: 404 when unknown, 503 when not (yet) loaded.
    pub fn get(&self, name: &str) -> Result<Arc<ServedModel>, InferError> {
        match read(&self.slots).get(name) {
            Some(Slot::Ready(m)) => Ok(m.clone()),
            Some(_) => Err(InferError::NotReady(name.to_owned())),
            None => Err(InferError::ModelNotFound(name.to_owned())),
        }
    }

    /// Every model known, with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        read(&self.slots)
            .iter()
            .map(|(name, slot)| {
                let (state, reason) = match slot {
                    Slot::Loading => ("LOADING", String::new()),
                    Slot::Ready(_) => ("READY", String::new()),
                    Slot::Failed(r) => ("UNAVAILABLE", r.clone()),
                    Slot::Unloaded => ("UNAVAILABLE", "unloaded".to_owned()),
                };
                IndexEntry {
                    name: name.clone(),
                    state: state.to_owned(),
                    reason,
                }
            })
            .collect()
    }

    /// Loaded models with their metrics.
    pub fn ready_models(&self) -> Vec<(String, Arc<ServedModel>)> {
        read(&self.slots)
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Ready(m) => Some((n.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether at least one model is known and every known model that has not been
    /// unloaded on purpose is ready.
    pub fn all_ready(&self) -> bool {
        let slots = read(&self.slots);
        !slots.is_empty()
            && slots
                .values()
                .all(|s| matches!(s, Slot::Ready(_) | Slot::Unloaded))
            && slots.values().any(|s| matches!(s, Slot::Ready(_)))
    }
}

/// Whether the repository API may load and unload models (Triton's `--model-control-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelControl {
    /// The models loaded at start stay; `load` and `unload` requests are refused (403).
    #[default]
    None,
    /// `load` and `unload` requests act.
    Explicit,
}

impl ModelControl {
    fn allows(self, op: &str) -> Result<(), InferError> {
        match self {
            ModelControl::Explicit => Ok(()),
            ModelControl::None => Err(InferError::Forbidden(format!(
                "model control is off: this server does not {op} models on request (start it \
                 with --model-control-mode explicit to allow the repository API's load and unload)"
            ))),
        }
    }
}

/// Most entries looked at inside one model folder, and how deep.
const MAX_MODEL_ENTRIES: usize = 10_000;
const MAX_MODEL_DEPTH: usize = 8;

/// The canonical path of `folder` when it and everything in it resolve inside `root`;
/// otherwise why not (naming the entry that leads out).
fn confined(root: &Path, folder: &Path) -> Result<PathBuf, String> {
    let canonical = |p: &Path| {
        p.canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", p.display()))
    };
    let root = canonical(root)?;
    let outside = |p: &Path| {
        format!(
            "{} leads outside the model repository {} (a symlink?); the repository serves \
             only files inside it",
            p.display(),
            root.display()
        )
    };
    let top = canonical(folder)?;
    if !top.starts_with(&root) || top == root {
        return Err(outside(folder));
    }
    let mut pending = vec![(top.clone(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .path();
            seen += 1;
            if seen > MAX_MODEL_ENTRIES {
                return Err(format!(
                    "{} holds more than {MAX_MODEL_ENTRIES} entries",
                    top.display()
                ));
            }
            let Ok(resolved) = path.canonicalize() else {
                continue; // a dangling link reads nothing
            };
            if !resolved.starts_with(&root) {
                return Err(outside(&path));
            }
            if resolved.is_dir() && depth < MAX_MODEL_DEPTH {
                pending.push((resolved, depth + 1));
            }
        }
    }
    Ok(top)
}

/// The source described by a repository folder's `sluice-model.json` (or detected).
fn settings_source(folder: &Path, defaults: &BatchConfig) -> Result<ModelSource, LoadError> {
    let path = folder.join(MODEL_SETTINGS_FILE);
    let settings: ModelSettings = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModelSettings::default(),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    let format = settings.format.unwrap_or_else(|| {
        if folder.join("tokenizer.json").is_file() {
            "bert".to_owned()
        } else {
            "sluice-mlp".to_owned()
        }
    });
    let batching = BatchConfig {
        max_batch_size: settings.max_batch_size.unwrap_or(defaults.max_batch_size),
        max_queue_delay: settings
            .max_queue_delay_us
            .map(Duration::from_micros)
            .unwrap_or(defaults.max_queue_delay),
        max_queue: settings.max_queue.unwrap_or(defaults.max_queue),
        instances: settings.instances.unwrap_or(defaults.instances),
        max_batch_tokens: settings
            .max_batch_tokens
            .unwrap_or(defaults.max_batch_tokens),
    };
    batching.validate().map_err(|e| LoadError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(ModelSource {
        format,
        storage_uri: folder.to_string_lossy().into_owned(),
        batching,
    })
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
