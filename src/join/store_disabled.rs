//! The join store in a build without RocksDB (`--no-default-features`,
//! as the fuzz targets build, which never open one): the same interface,
//! and [`JoinStore::open`] says the build has no join store. No value of
//! [`JoinStore`] can exist, so its other methods are never called.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

pub use super::{STORE_KEY_LEN, store_key};
pub use crate::config::DEFAULT_JOIN_MEMORY;

/// Errors opening or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum JoinStoreError {
    #[error("the join store {path}: this build of driftwatch has no join store (feature `join-store`)")]
    Unavailable { path: String },
    #[error("the join store {path} is failing: {failure}")]
    Failing { path: String, failure: String },
}

/// Told of the store's failures and its recovery.
pub type StatusHook = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// A batch of writes (kept by nothing: no store takes it).
#[derive(Debug, Default)]
pub struct WriteBatch;

impl WriteBatch {
    pub fn put(&mut self, _key: impl AsRef<[u8]>, _value: impl AsRef<[u8]>) {}
    pub fn delete(&mut self, _key: impl AsRef<[u8]>) {}
}

/// No store: [`JoinStore::open`] fails.
#[derive(Debug)]
pub struct JoinStore {
    never: std::convert::Infallible,
}

impl JoinStore {
    pub fn open(dir: &Path, _memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        Err(JoinStoreError::Unavailable { path: dir.display().to_string() })
    }
    pub fn restore(_checkpoint: &Path, live: &Path, memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        JoinStore::open(live, memory_bytes)
    }
    pub fn open_empty(live: &Path, memory_bytes: u64) -> Result<Arc<JoinStore>, JoinStoreError> {
        JoinStore::open(live, memory_bytes)
    }
    pub fn path(&self) -> &Path {
        match self.never {}
    }
    pub fn live_path(&self) -> PathBuf {
        match self.never {}
    }
    pub fn set_status_hook(&self, _hook: StatusHook) {
        match self.never {}
    }
    pub fn gone_below(&self, _prefix: u64) -> Arc<AtomicI64> {
        match self.never {}
    }
    pub fn get<T>(&self, _key: &[u8; STORE_KEY_LEN], _read: impl FnOnce(Option<&[u8]>) -> T) -> T {
        match self.never {}
    }
    pub fn get_sorted(&self, _keys: &[[u8; STORE_KEY_LEN]], _read: impl FnMut(usize, Option<&[u8]>)) {
        match self.never {}
    }
    pub fn write(&self, _batch: WriteBatch) -> Result<(), JoinStoreError> {
        match self.never {}
    }
    pub fn delete_join(&self, _prefix: u64) {
        match self.never {}
    }
    pub fn recover(&self) -> bool {
        match self.never {}
    }
    pub fn rebuild(&self) -> Result<(), JoinStoreError> {
        match self.never {}
    }
    pub fn failure(&self) -> Option<String> {
        match self.never {}
    }
    pub fn disk_bytes(&self) -> u64 {
        match self.never {}
    }
    pub fn checkpoint(&self, _target: &Path) -> Result<(), JoinStoreError> {
        match self.never {}
    }
    pub fn flush(&self) -> Result<(), JoinStoreError> {
        match self.never {}
    }
}
