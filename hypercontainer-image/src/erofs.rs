//! Read-only EROFS images built from unpacked layer trees with `mkfs.erofs`
//! (erofs-utils).
//!
//! EROFS is the natural format for image layers handed to the guest: it is
//! read-only by design, compact, needs no journal or free-space estimate,
//! mounts fast, and overlayfs takes it as a lower directory directly.
//! `mkfs.erofs` keeps ownership, modes, hardlinks, symlinks, device nodes
//! (overlay whiteouts), xattrs (`trusted.overlay.opaque` included) and, with
//! `--preserve-mtime`, per-file mtimes, exactly as found in the tree.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from building an EROFS image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// The `mkfs.erofs` tool is not installed.
    #[error("{0:?} not found (install erofs-utils)")]
    ToolMissing(PathBuf),
    /// The tool could not be started.
    #[error("running {tool:?}")]
    Spawn {
        /// The tool.
        tool: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tool failed.
    #[error("{tool:?} exited with {status}: {stderr}")]
    Failed {
        /// The tool.
        tool: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ErofsError>;

/// Builds EROFS images with `mkfs.erofs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsBuilder {
    tool: PathBuf,
    compressor: Option<String>,
}

impl Default for ErofsBuilder {
    fn default() -> Self {
        ErofsBuilder {
            tool: PathBuf::from("mkfs.erofs"),
            compressor: None,
        }
    }
}

impl ErofsBuilder {
    /// `mkfs.erofs` from `PATH`, uncompressed images.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses another `mkfs.erofs` binary.
    pub fn tool(mut self, tool: impl Into<PathBuf>) -> Self {
        self.tool = tool.into();
        self
    }

    /// Compresses with the given algorithm (`lz4`, `lz4hc`); the guest
    /// kernel must support it.
    pub fn compressor(mut self, alg: impl Into<String>) -> Self {
        self.compressor = Some(alg.into());
        self
    }

    /// Builds `out` from the directory `tree`.
    pub fn build(&self, tree: &Path, out: &Path) -> Result<()> {
        let mut cmd = Command::new(&self.tool);
        cmd.arg("--quiet").arg("--preserve-mtime");
        if let Some(c) = &self.compressor {
            cmd.arg(format!("-z{c}"));
        }
        cmd.arg(out).arg(tree);
        let output = cmd.output().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ErofsError::ToolMissing(self.tool.clone())
            } else {
                ErofsError::Spawn {
                    tool: self.tool.clone(),
                    source,
                }
            }
        })?;
        if !output.status.success() {
            return Err(ErofsError::Failed {
                tool: self.tool.clone(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let err = ErofsBuilder::new()
            .tool("/nonexistent/mkfs.erofs")
            .build(d.path(), &d.path().join("x.erofs"))
            .unwrap_err();
        assert!(matches!(err, ErofsError::ToolMissing(_)));
    }

    #[test]
    fn builds_an_image() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), b"data").unwrap();
        let out = d.path().join("x.erofs");
        ErofsBuilder::new().build(&tree, &out).unwrap();
        let img = std::fs::read(&out).unwrap();
        // EROFS superblock magic at offset 1024.
        assert_eq!(&img[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    }
}
