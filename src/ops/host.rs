//! What the ops modules need from this machine: where a program is (with an install hint when
//! it is missing) and a free loopback port. Starting and supervising the programs is left to the
//! modules that run them.

use std::net::TcpListener;
use std::path::PathBuf;

/// A program the caller needs is not installed; says which package provides it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{program}` not found. Install it: `sudo apt-get install -y {debian}` (Debian/Ubuntu){}",
    brew.map(|brew| format!(" or `brew install {brew}` (macOS)")).unwrap_or_default()
)]
pub struct Missing {
    pub program: &'static str,
    /// The Debian/Ubuntu package that provides it.
    pub debian: &'static str,
    /// The Homebrew formula, where macOS has one.
    pub brew: Option<&'static str>,
}

/// Where a program is, searching PATH and the sbin folders nginx lives in.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// [`which`], or the error naming the package to install.
pub fn find(
    program: &'static str,
    debian: &'static str,
    brew: Option<&'static str>,
) -> Result<PathBuf, Missing> {
    which(program).ok_or(Missing {
        program,
        debian,
        brew,
    })
}

/// A free loopback port (the kernel's pick; closed again before use).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
