//! File helpers every layer uses: bounded reads of the text files people
//! write (config, rules, rule tests, baselines) and atomic, durable
//! replacement of a file (temporary file, fsync, rename, fsync of the
//! directory). A leaf of the module graph: it uses nothing else of the
//! crate.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

/// The largest config, rule or rule-test file read (1 MiB). Real ones are a
/// few kilobytes; a bigger file is refused before it is parsed, so a hostile
/// or broken file cannot make the loader use unbounded memory.
pub const MAX_TEXT_FILE_BYTES: usize = 1 << 20;

/// Refuses config, rule or rule-test text longer than
/// [`MAX_TEXT_FILE_BYTES`]; the caller names the file.
pub fn check_text_size(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT_FILE_BYTES {
        return Err(format!("the file is {} bytes; the limit is {MAX_TEXT_FILE_BYTES} bytes", text.len()));
    }
    Ok(())
}

/// Reads a text file of at most `limit` bytes without reading more than
/// that from the disk; a longer file is an error naming its size.
pub fn read_text_file_bounded(path: &Path, limit: usize) -> io::Result<String> {
    let mut text = String::new();
    fs::File::open(path)?.take(limit as u64 + 1).read_to_string(&mut text)?;
    if text.len() > limit {
        let size = fs::metadata(path).map(|m| m.len().to_string()).unwrap_or_else(|_| "more than".to_string());
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file is {size} bytes; the limit is {limit} bytes"),
        ));
    }
    Ok(text)
}

/// Replaces `dir/name` with `bytes` atomically and durably: the bytes go
/// to `dir/.name.tmp`, which is fsynced and renamed over `name`, then the
/// directory is fsynced so the rename survives a power cut. After a crash
/// the file holds either its old or its new content, never a mix. The
/// temporary file is removed when a step fails.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(name))?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Fsyncs a directory, so renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
