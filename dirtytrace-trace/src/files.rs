//! Reading the files users hand us (specs, kernels, fonts, traces) safely: only regular files,
//! each with a size cap, so a FIFO cannot block us and `/dev/zero` cannot fill memory.

use std::io::Read;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It is a FIFO, a device, a directory or a socket, where a regular file belongs.
    #[error("{path} is not a regular file (a {kind}); dirtytrace reads only regular files here")]
    NotRegular {
        /// The file.
        path: std::path::PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// It is larger than anything valid of its kind.
    #[error("{path} is {size} bytes, more than the {limit} bytes a valid {what} can be")]
    TooLarge {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
        /// What the file should be.
        what: &'static str,
    },
}

/// What a file that is not a regular file is, in words.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Checks that `path` is a regular file (after symlinks) of at most `limit` bytes, and
/// returns its size.
pub fn check_regular(path: &Path, limit: u64, what: &'static str) -> Result<u64, FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError::Io { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular { path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { path: path.to_path_buf(), size: meta.len(), limit, what });
    }
    Ok(meta.len())
}

/// Opens `path` if it is a regular file (after symlinks) of at most `limit` bytes. Checked
/// before opening, so a FIFO never blocks the open and `/dev/zero` is never read.
pub fn open_regular(path: &Path, limit: u64, what: &'static str) -> Result<std::fs::File, FileError> {
    check_regular(path, limit, what)?;
    std::fs::File::open(path).map_err(|source| FileError::Io { path: path.to_path_buf(), source })
}

/// Reads a regular file of at most `limit` bytes whole. The read itself is capped too, in
/// case the file grows after the check.
pub fn read_regular(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path, limit, what)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, limit, what });
    }
    Ok(bytes)
}
