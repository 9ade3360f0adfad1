//! Append-only JSONL files that survive being killed: one JSON value per line, each line written
//! with a single `write_all` and flushed, so a kill leaves at most one torn line at the end (no
//! newline yet), which `JsonlLog::open` cuts off.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct JsonlLog {
    path: PathBuf,
    file: File,
}

impl JsonlLog {
    /// Open `path` for appending (created when missing, with its parent directory). Returns the
    /// values of its complete lines; a last line without its newline (a write cut short) is
    /// removed from the file. A complete line that is not JSON is an error.
    pub fn open(path: &Path) -> Result<(Self, Vec<serde_json::Value>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut values = Vec::new();
        for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let v = serde_json::from_slice(line)
                .map_err(|e| Error::config(path, format!("line {}", i + 1), format!("not JSON ({e}); not a file this command wrote?")))?;
            values.push(v);
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        if complete < bytes.len() {
            file.set_len(complete as u64).map_err(|e| Error::io(path, e))?;
        }
        Ok((JsonlLog { path: path.to_path_buf(), file }, values))
    }

    /// Append one value as a line and flush it to the OS.
    pub fn append<T: serde::Serialize>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_vec(v).map_err(|e| Error::Input(format!("{}: cannot serialise: {e}", self.path.display())))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Flush the file's data to disk (end of a batch).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// `path` with `suffix` appended to its file name (`prefs.jsonl` -> `prefs.jsonl.skipped`).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_dropped() {
        let dir = std::env::temp_dir().join(format!("stic-jsonl-{}", std::process::id()));
        let p = dir.join("x.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut log, vals) = JsonlLog::open(&p).unwrap();
            assert!(vals.is_empty());
            log.append(&serde_json::json!({"a": 1})).unwrap();
            log.append(&serde_json::json!({"a": 2})).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"a\": 3, \"b\"").unwrap();
        drop(f);
        let (mut log, vals) = JsonlLog::open(&p).unwrap();
        assert_eq!(vals.len(), 2);
        log.append(&serde_json::json!({"a": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        std::fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        assert!(JsonlLog::open(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
