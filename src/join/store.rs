//! The join store: an embedded RocksDB database holding the label join's
//! waiting predictions, early labels and remembered pairs on disk, so that
//! a `label_horizon` of days costs disk, not memory.
//!
//! One store serves every model's joins; each join owns a key prefix
//! (8 bytes), followed by the 16-byte join key. Writes go in batches without
//! a write-ahead log: the store is made durable by checkpoints (a RocksDB
//! checkpoint of its files, tied to a driftwatch checkpoint's offsets), as
//! Flink and Kafka Streams do with their state stores.
//!
//! Memory is bounded by configuration (`state.join_memory`), not by
//! traffic: one LRU cache holds the index and filter blocks (pinned) and
//! the blocks of single lookups, and the memtables are charged to it
//! through a write-buffer manager. A micro-batch's lookups do not fill
//! the cache: they read the files through the operating system's page
//! cache (see [`JoinStore::get_sorted`]). Entries that
//! expired or were evicted are invisible at once (each join knows the time
//! below which its entries are gone) and are removed from disk by a
//! compaction filter reading that time.
//!
//! Why RocksDB: measured on this 2-core machine against fjall (a pure-Rust
//! LSM), RocksDB's writes and lookups were faster (236k vs 185k puts/s,
//! 94k vs 79k lookup-and-delete/s), its memory stayed inside the budget
//! (251 MiB vs 402 MiB for the same data: fjall had no working total
//! limit), and it has a checkpoint API (hard links, 0.12 s) to tie the
//! store to a checkpoint's offsets. Its cost is build time (about 10
//! minutes, once) and libclang for the bindings.
//!
//! Failures: a write that fails (RocksDB stops taking writes after a file
//! it could not write: disk full, a directory gone) leaves the batch with
//! its join, in memory, and is retried ([`JoinStore::recover`]): when
//! RocksDB does not recover by itself, the store is rebuilt from what it
//! still reads into a fresh directory beside it, and lives on there. A
//! read that fails is retried in place until it succeeds: a read must not
//! answer "absent" for an entry that is there. Every failure and the
//! recovery are reported to the status hook (readiness).
//!
//! Architecture invariant: the only I/O below the pipeline; local disk only.
//! An error never panics and never loses an entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rocksdb::{BlockBasedOptions, Cache, DB, IteratorMode, Options, ReadOptions, WriteBufferManager, WriteOptions};

/// Errors opening or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum JoinStoreError {
    #[error("the join store {path}: {source}")]
    Open { path: String, source: rocksdb::Error },
    #[error("the join store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the join store {path}: {source}")]
    Write { path: String, source: rocksdb::Error },
    #[error("the join store {path} is failing: {failure}")]
    Failing { path: String, failure: String },
}

pub use crate::config::DEFAULT_JOIN_MEMORY;

pub use super::{STORE_KEY_LEN, store_key};
pub use rocksdb::WriteBatch;

/// A join's times below which its entries are gone, shared with the
/// compaction filter (one per join prefix).
type Horizons = RwLock<HashMap<u64, Arc<AtomicI64>>>;

/// Told of the store's failures (`Some`: what failed) and its recovery
/// (`None`); the daemon's readiness listens.
pub type StatusHook = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// The database and the directory it lives in (a rebuild moves it).
struct Live {
    db: DB,
    path: PathBuf,
    /// How many times the store was rebuilt (names the next directory).
    rebuilds: u32,
}

/// When the next recovery attempt is due, and the wait after it.
struct Retry {
    next: Instant,
    backoff: Duration,
}

/// The first wait between recovery attempts, doubled up to the longest.
const RECOVERY_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const RECOVERY_BACKOFF_LONGEST: Duration = Duration::from_secs(30);
/// Entries copied per batch when the store is rebuilt.
const REBUILD_BATCH_ENTRIES: usize = 65_536;
/// The key a probe write deletes: no join has prefix 0 in practice (a
/// prefix is a 64-bit hash), and deleting an absent key changes nothing.
const PROBE_KEY: [u8; STORE_KEY_LEN] = [0; STORE_KEY_LEN];

/// The embedded store (see the module doc).
pub struct JoinStore {
    live: RwLock<Live>,
    /// The directory the store was opened in; rebuilds go beside it.
    origin: PathBuf,
    cache: Cache,
    write_buffers: WriteBufferManager,
    memory: usize,
    horizons: Arc<Horizons>,
    /// The last error, cleared by the next successful write.
    failure: Mutex<Option<String>>,
    retry: Mutex<Retry>,
    status_hook: RwLock<Option<StatusHook>>,
}

impl std::fmt::Debug for JoinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinStore").field("path", &self.origin).finish_non_exhaustive()
    }
}

impl JoinStore {
    /// Opens (creating if missing) the store in `dir` with `memory_bytes`
    /// for its caches and memtables together.
    pub fn open(dir: &Path, memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        let memory = usize::try_from(memory_bytes).unwrap_or(usize::MAX).max(8 * 1024 * 1024);
        let cache = Cache::new_lru_cache(memory);
        // Memtables are charged to the cache: half the budget at most.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(memory / 2, false, cache.clone());
        let horizons: Arc<Horizons> = Arc::default();
        let db = open_db(dir, &cache, &write_buffers, memory, &horizons)?;
        Ok(Arc::new(JoinStore {
            live: RwLock::new(Live { db, path: dir.to_path_buf(), rebuilds: 0 }),
            origin: dir.to_path_buf(),
            cache,
            write_buffers,
            memory,
            horizons,
            failure: Mutex::new(None),
            retry: Mutex::new(Retry { next: Instant::now(), backoff: RECOVERY_BACKOFF_FIRST }),
            status_hook: RwLock::new(None),
        }))
    }

    /// The directory the store was opened in.
    pub fn path(&self) -> &Path {
        &self.origin
    }

    /// The directory the store lives in now (another after a rebuild).
    pub fn live_path(&self) -> PathBuf {
        self.live().path.clone()
    }

    /// Installs the hook told of failures and the recovery.
    pub fn set_status_hook(&self, hook: StatusHook) {
        *self.status_hook.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The time below which the entries of join `prefix` are gone, as the
    /// compaction filter reads it (registered when first asked).
    pub fn gone_below(&self, prefix: u64) -> Arc<AtomicI64> {
        let mut horizons = self.horizons.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(horizons.entry(prefix).or_insert_with(|| Arc::new(AtomicI64::new(i64::MIN))))
    }

    /// The stored value of `key`, passed to `read` (`None`: absent). A
    /// read error is reported and the read retried until it succeeds (the
    /// caller waits: answering "absent" could pair wrongly).
    pub fn get<T>(&self, key: &[u8; STORE_KEY_LEN], read: impl FnOnce(Option<&[u8]>) -> T) -> T {
        let mut wait = RECOVERY_BACKOFF_FIRST;
        let mut read = Some(read);
        loop {
            let error = {
                let live = self.live();
                match live.db.get_pinned(key) {
                    Ok(value) => return (read.take().expect("read once"))(value.as_deref()),
                    Err(error) => error,
                }
            };
            self.fail(format!("reading (retried until it succeeds): {error}"));
            std::thread::sleep(wait);
            wait = (wait * 2).min(RECOVERY_BACKOFF_LONGEST);
        }
    }

    /// The stored values of `keys` (sorted, distinct) in one batched
    /// lookup, passed to `read` with each key's index (`None`: absent). A
    /// key whose lookup failed is left out: its reader asks [`Self::get`].
    pub fn get_sorted(&self, keys: &[[u8; STORE_KEY_LEN]], mut read: impl FnMut(usize, Option<&[u8]>)) {
        let live = self.live();
        let Some(family) = live.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME) else { return };
        // The blocks read are not kept in the cache: a micro-batch's keys
        // are hashes spread over the whole store, so a block read for one
        // is seldom read again before it is evicted, and putting it in the
        // cache (and evicting another) cost more than reading it again
        // (10M-prediction replay 89 s -> 65 s, RSS 448 -> 257 MB).
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        for (index, value) in
            live.db.batched_multi_get_cf_opt(family, keys.iter(), true, &options).into_iter().enumerate()
        {
            if let Ok(value) = value {
                read(index, value.as_deref());
            }
        }
    }

    /// Writes a batch (no write-ahead log: checkpoints make the store
    /// durable). On error the batch is not applied, and the error is kept.
    pub fn write(&self, batch: WriteBatch) -> Result<(), JoinStoreError> {
        let written = {
            let live = self.live();
            live.db.write_opt(batch, &no_wal()).map_err(|source| (live.path.display().to_string(), source))
        };
        match written {
            Ok(()) => {
                self.recovered();
                Ok(())
            }
            Err((path, source)) => {
                self.fail(format!("writing: {source}"));
                Err(JoinStoreError::Write { path, source })
            }
        }
    }

    /// Deletes every entry of join `prefix` (a join dropped on restore).
    pub fn delete_join(&self, prefix: u64) {
        let from = prefix.to_be_bytes().to_vec();
        let to = match prefix.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; STORE_KEY_LEN + 1],
        };
        let mut batch = WriteBatch::default();
        batch.delete_range(from, to);
        let _ = self.write(batch);
    }

    fn fail(&self, error: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            tracing::error!(path = %self.origin.display(), %error, "JOIN STORE FAILING: writes wait in memory");
            let mut retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
            *retry = Retry { next: Instant::now() + RECOVERY_BACKOFF_FIRST, backoff: RECOVERY_BACKOFF_FIRST };
        }
        if let Some(hook) = &*self.status_hook.read().unwrap_or_else(|e| e.into_inner()) {
            hook(Some(&error));
        }
        *failure = Some(error);
    }

    /// A write succeeded: the failure (if any) is over.
    fn recovered(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.take().is_some() {
            tracing::info!(path = %self.live().path.display(), "the join store takes writes again");
            if let Some(hook) = &*self.status_hook.read().unwrap_or_else(|e| e.into_inner()) {
                hook(None);
            }
        }
    }

    /// While the store fails, and when the next attempt is due (the waits
    /// between attempts double, up to 30 s): a probe write tells
    /// whether RocksDB takes writes again (it recovers by itself from a
    /// full disk); if not, the store is rebuilt (see [`Self::rebuild`]).
    /// Returns whether the store takes writes (its joins then write what
    /// waits in memory).
    pub fn recover(&self) -> bool {
        if self.failure().is_none() {
            return true;
        }
        {
            let mut retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
            if Instant::now() < retry.next {
                return false;
            }
            retry.backoff = (retry.backoff * 2).min(RECOVERY_BACKOFF_LONGEST);
            retry.next = Instant::now() + retry.backoff;
        }
        let mut probe = WriteBatch::default();
        probe.delete(PROBE_KEY);
        if self.write(probe).is_ok() {
            return true;
        }
        match self.rebuild() {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(error) => {
                tracing::warn!(%error, "the join store could not be rebuilt yet; trying again later");
                false
            }
        }
    }

    /// Rebuilds the store after RocksDB stopped taking writes for good (a
    /// file it could not write, other than a full disk): every entry it
    /// still reads — its files and its memtables — is copied into a fresh
    /// database in a directory beside the first (`joins.rebuild-N`), which
    /// replaces it. The old directory is removed once closed. Checkpoints
    /// are not touched (their files are links of their own).
    pub fn rebuild(&self) -> Result<(), JoinStoreError> {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let number = live.rebuilds + 1;
        let mut name = self.origin.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".rebuild-{number}"));
        let fresh_path = self.origin.with_file_name(name);
        match std::fs::remove_dir_all(&fresh_path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(&fresh_path)(error)),
            _ => {}
        }
        let fresh = open_db(&fresh_path, &self.cache, &self.write_buffers, self.memory, &self.horizons)?;
        let write_error = |source| JoinStoreError::Write { path: fresh_path.display().to_string(), source };
        let copied = (|| {
            let mut read = ReadOptions::default();
            read.fill_cache(false);
            let mut batch = WriteBatch::default();
            let mut entries = 0u64;
            for item in live.db.iterator_opt(IteratorMode::Start, read) {
                let (key, value) =
                    item.map_err(|source| JoinStoreError::Write { path: live.path.display().to_string(), source })?;
                batch.put(key, value);
                entries += 1;
                if batch.len() >= REBUILD_BATCH_ENTRIES {
                    fresh.write_opt(std::mem::take(&mut batch), &no_wal()).map_err(write_error)?;
                }
            }
            fresh.write_opt(batch, &no_wal()).map_err(write_error)?;
            fresh.flush().map_err(write_error)?;
            Ok(entries)
        })();
        let entries = match copied {
            Ok(entries) => entries,
            Err(error) => {
                drop(fresh);
                let _ = std::fs::remove_dir_all(&fresh_path);
                return Err(error);
            }
        };
        let old = std::mem::replace(&mut *live, Live { db: fresh, path: fresh_path, rebuilds: number });
        let old_path = old.path.clone();
        drop(old);
        if old_path.is_dir() && std::fs::remove_dir_all(&old_path).is_err() {
            tracing::warn!(path = %old_path.display(), "the failed join store's directory could not be removed");
        }
        tracing::warn!(
            from = %old_path.display(),
            to = %live.path.display(),
            entries,
            "the join store stopped taking writes: rebuilt from what it held into a fresh directory"
        );
        Ok(())
    }

    /// The last read or write error, until a write succeeds.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes the store's files take on disk (its SST files).
    pub fn disk_bytes(&self) -> u64 {
        self.live().db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0)
    }

    /// Writes a consistent copy of the store into `target` (which must not
    /// exist): its memtables are flushed, its files hard-linked. What each
    /// join still holds in its overlay must be flushed first.
    pub fn checkpoint(&self, target: &Path) -> Result<(), JoinStoreError> {
        let error = |source| JoinStoreError::Write { path: target.display().to_string(), source };
        let live = self.live();
        rocksdb::checkpoint::Checkpoint::new(&live.db).and_then(|c| c.create_checkpoint(target)).map_err(error)
    }

    /// Opens the store in `live` as the checkpoint in `checkpoint` left it:
    /// whatever `live` held is removed, the checkpoint's files are
    /// hard-linked (its table files never change) or copied into it.
    pub fn restore(checkpoint: &Path, live: &Path, memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        remove_live(live)?;
        std::fs::create_dir_all(live).map_err(io(live))?;
        for entry in std::fs::read_dir(checkpoint).map_err(io(checkpoint))? {
            let from = entry.map_err(io(checkpoint))?.path();
            let Some(name) = from.file_name() else { continue };
            let to = live.join(name);
            let is_table = from.extension().is_some_and(|e| e == "sst");
            if !is_table || std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(io(&to))?;
            }
        }
        JoinStore::open(live, memory_bytes)
    }

    /// Opens an empty store in `live`, removing whatever it held (state
    /// after the last checkpoint, which a restart must not see).
    pub fn open_empty(live: &Path, memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        remove_live(live)?;
        JoinStore::open(live, memory_bytes)
    }

    /// Flushes the memtables to files (tests and benchmarks).
    pub fn flush(&self) -> Result<(), JoinStoreError> {
        let live = self.live();
        live.db.flush().map_err(|source| JoinStoreError::Write { path: live.path.display().to_string(), source })
    }
}

/// Writes without a write-ahead log (checkpoints make the store durable).
fn no_wal() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.disable_wal(true);
    options
}

/// Maps an I/O error on `path` to a [`JoinStoreError::Io`] naming it.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinStoreError {
    let path = path.display().to_string();
    move |source| JoinStoreError::Io { path, source }
}

/// Removes a live store directory `live` and the rebuilt ones beside it
/// (`live.rebuild-N`): what a restart must not see.
fn remove_live(live: &Path) -> Result<(), JoinStoreError> {
    if live.is_dir() {
        std::fs::remove_dir_all(live).map_err(io(live))?;
    } else if live.exists() {
        std::fs::remove_file(live).map_err(io(live))?;
    }
    let (Some(parent), Some(name)) = (live.parent(), live.file_name()) else { return Ok(()) };
    let mut prefix = name.to_os_string();
    prefix.push(".rebuild-");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(parent) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

/// Opens the database in `dir` (creating it) with the store's memory
/// budget and its compaction filter.
fn open_db(
    dir: &Path,
    cache: &Cache,
    write_buffers: &WriteBufferManager,
    memory: usize,
    horizons: &Arc<Horizons>,
) -> Result<DB, JoinStoreError> {
    std::fs::create_dir_all(dir).map_err(|source| JoinStoreError::Io { path: dir.display().to_string(), source })?;
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_bloom_filter(10.0, false);
    // Every file's filter and index stay in the cache (charged to it): a
    // lookup that evicted a filter read the whole filter back, which was
    // a third of a lookup's time with the cache a third of the store.
    table.set_unpartitioned_pinning_tier(rocksdb::BlockBasedTablePinningTier::All);
    // A label's lookup reads one entry from a block not in the cache:
    // small blocks make that read, its checksum and its copy cheap.
    table.set_block_size(4 * 1024);
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_block_based_table_factory(&table);
    options.set_write_buffer_manager(write_buffers);
    options.set_write_buffer_size((memory / 8).min(64 * 1024 * 1024));
    // Most reads miss the write buffers (a new id, or a label whose
    // prediction was flushed hours ago): a bloom filter over their keys
    // skips the skip-list walk, which was 40% of a disk replay's time.
    options.set_memtable_whole_key_filtering(true);
    options.set_memtable_prefix_bloom_ratio(0.1);
    options.set_max_write_buffer_number(3);
    options.set_max_open_files(512);
    // Uncompressed: entries are hashes, times and scores (LZ4 saved little
    // disk and cost a decompression per block read, a compression per
    // block written).
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options.set_max_background_jobs(2);
    options.set_level_compaction_dynamic_level_bytes(true);
    let filter_horizons = Arc::clone(horizons);
    options.set_compaction_filter("driftwatch-join-expiry", move |_level: u32, key: &[u8], value: &[u8]| {
        if expired_in_compaction(&filter_horizons, key, value) {
            rocksdb::CompactionDecision::Remove
        } else {
            rocksdb::CompactionDecision::Keep
        }
    });
    // The default column family opened by name, so that batched lookups
    // (which take a family) can name it.
    let family = rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, options.clone());
    DB::open_cf_descriptors(&options, dir, [family])
        .map_err(|source| JoinStoreError::Open { path: dir.display().to_string(), source })
}

/// Whether a stored entry is gone for its join (the compaction filter's
/// question). Entries of a join this process does not know are kept.
fn expired_in_compaction(horizons: &Horizons, key: &[u8], value: &[u8]) -> bool {
    let Some(prefix) = key.get(..8).and_then(|p| <[u8; 8]>::try_from(p).ok()) else { return false };
    let prefix = u64::from_be_bytes(prefix);
    let gone_below = {
        let horizons = horizons.read().unwrap_or_else(|e| e.into_inner());
        match horizons.get(&prefix) {
            Some(time) => time.load(Ordering::Relaxed),
            None => return false,
        }
    };
    match super::disk::latest_expiry(value) {
        Some(latest) => latest < gone_below,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &JoinStore, key: u8, value: &[u8]) -> Result<(), JoinStoreError> {
        let mut batch = WriteBatch::default();
        batch.put([key; STORE_KEY_LEN], value);
        store.write(batch)
    }

    fn value(store: &JoinStore, key: u8) -> Option<Vec<u8>> {
        store.get(&[key; STORE_KEY_LEN], |bytes| bytes.map(<[u8]>::to_vec))
    }

    /// Its directory replaced by a file (a hard error: RocksDB takes no
    /// more writes), the store fails, reports it, and keeps reading; the
    /// rebuild fails while its directory cannot be made, then succeeds,
    /// with every entry — those in files and those only in memtables.
    #[test]
    fn a_store_that_stops_taking_writes_is_rebuilt_with_everything_it_held() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("joins");
        let store = JoinStore::open(&live, 16 << 20).expect("opens");
        let reports: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let sink = Arc::clone(&reports);
        store.set_status_hook(Box::new(move |failure| sink.lock().unwrap().push(failure.map(str::to_string))));
        put(&store, 1, b"in a file").expect("writes");
        store.flush().expect("flushes");
        put(&store, 2, b"in a memtable").expect("writes");

        std::fs::rename(&live, dir.path().join("joins.away")).expect("moves");
        std::fs::write(&live, b"not a directory").expect("writes a file");
        assert!(store.flush().is_err(), "a flush into a file fails");
        assert!(put(&store, 3, b"refused").is_err(), "after a failed flush RocksDB takes no writes");
        assert!(store.failure().is_some());
        assert_eq!(value(&store, 1).as_deref(), Some(&b"in a file"[..]), "reads go on");
        assert_eq!(value(&store, 2).as_deref(), Some(&b"in a memtable"[..]));

        let blocked = dir.path().join("joins.rebuild-1");
        std::fs::write(&blocked, b"in the way").expect("writes a file");
        assert!(store.rebuild().is_err(), "no directory for the rebuild");
        std::fs::remove_file(&blocked).expect("removes");
        store.rebuild().expect("rebuilds");
        assert_eq!(store.live_path(), blocked);
        put(&store, 3, b"accepted").expect("writes again");
        store.flush().expect("flushes into the new directory");
        for (key, expected) in [(1, &b"in a file"[..]), (2, b"in a memtable"), (3, b"accepted")] {
            assert_eq!(value(&store, key).as_deref(), Some(expected), "key {key}");
        }
        assert!(store.failure().is_none());
        let reports = reports.lock().unwrap();
        assert!(reports.first().is_some_and(Option::is_some), "{reports:?}");
        assert_eq!(reports.last(), Some(&None), "the recovery is reported: {reports:?}");

        // A restart removes the rebuilt directory with the live one.
        drop(reports);
        drop(store);
        std::fs::remove_file(&live).expect("removes the file");
        JoinStore::open_empty(&live, 16 << 20).expect("opens empty");
        assert!(!blocked.exists(), "the rebuilt directory is gone");
    }
}
