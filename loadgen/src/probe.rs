//! What a fleet costs the server and the generator: resident memory of processes (from
//! `/proc/<pid>/status`) and the disk space of a directory tree, read at the boundaries of
//! a run's phases, so that per-device figures come out of one process that also holds the
//! devices' TLS sessions (see `poll --register-first`).

use std::path::{Path, PathBuf};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `/proc/<pid>/status` could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It lacks a field.
    #[error("{path}: no {field} line")]
    Field {
        /// The file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },
}

/// Resident memory of processes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most ever resident.
    pub hwm: u64,
}

/// The `kB` value of `field` in a `/proc/<pid>/status` text, in bytes.
pub fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb = rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        Some(kb * 1024)
    })
}

/// Memory of `pids`, summed; of this process when `pids` is empty.
pub fn memory(pids: &[u32]) -> Result<Memory, ProbeError> {
    let paths: Vec<PathBuf> = if pids.is_empty() {
        vec![PathBuf::from("/proc/self/status")]
    } else {
        pids.iter()
            .map(|p| PathBuf::from(format!("/proc/{p}/status")))
            .collect()
    };
    let mut total = Memory::default();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::Read {
            path: path.clone(),
            source,
        })?;
        let field = |field: &'static str| {
            status_field(&text, field).ok_or_else(|| ProbeError::Field {
                path: path.clone(),
                field,
            })
        };
        total.rss += field("VmRSS")?;
        total.hwm += field("VmHWM")?;
    }
    Ok(total)
}

/// Disk space used by the files under `dir` (allocated blocks, like `du -s`, counting
/// hard links once per path), in bytes. Files that vanish meanwhile are skipped.
pub fn disk_usage(dir: &Path) -> Result<u64, ProbeError> {
    use std::os::unix::fs::MetadataExt;
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProbeError::Read { path, source }
    };
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let meta = std::fs::symlink_metadata(&d).map_err(read_err(&d))?;
        total += meta.blocks() * 512;
        if !meta.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&d).map_err(read_err(&d))? {
            let entry = entry.map_err(read_err(&d))?;
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(read_err(&entry.path())(e)),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse_in_bytes() {
        let text = "Name:\tota-server\nVmHWM:\t  204800 kB\nVmRSS:\t   102400 kB\nThreads:\t4\n";
        assert_eq!(status_field(text, "VmRSS"), Some(100 * 1024 * 1024));
        assert_eq!(status_field(text, "VmHWM"), Some(200 * 1024 * 1024));
        assert_eq!(status_field(text, "VmSwap"), None);
        assert_eq!(status_field(text, "Threads"), None); // no kB unit
        assert_eq!(status_field("VmRSSx: 5 kB\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_has_memory_and_a_missing_pid_is_an_error() {
        let m = memory(&[]).unwrap();
        assert!(m.rss > 0 && m.hwm >= m.rss, "{m:?}");
        let two = memory(&[std::process::id(), std::process::id()]).unwrap();
        assert!(two.rss >= m.rss, "{two:?} {m:?}");
        assert!(matches!(memory(&[u32::MAX]), Err(ProbeError::Read { .. })));
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("b"), vec![2u8; 50_000]).unwrap();
        let used = disk_usage(dir.path()).unwrap() - empty;
        // At least the data, at most the data plus a few blocks of slack per file and dir.
        assert!(
            (150_000..=150_000 + 3 * 64 * 1024).contains(&used),
            "{used}"
        );
        assert!(disk_usage(&dir.path().join("nope")).is_err());
    }
}
