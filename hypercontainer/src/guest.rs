//! Where the in-VM agent lives, and the initramfs that carries it.
//!
//! The agent (`hypercontainer-agent`, package `hypercontainer-guest`) is a
//! static binary that runs as PID 1 of every sandbox VM. `cargo xtask agent`
//! builds it and installs it as `<cache>/agent/hypercontainer-agent`, where
//! `<cache>` is the SDK's cache directory ([`crate::kernel::cache_dir`]).
//! `$HYPERCONTAINER_AGENT` overrides that path.
//!
//! At run time the agent is packed as `/init` into a `newc` initramfs
//! (with `/dev/console`), cached as
//! `<cache>/agent/initramfs/<sha256 prefix of the agent>.cpio`: a rebuilt
//! agent gets a new archive, an unchanged one is packed once.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::initramfs::{CpioWriter, InitramfsError, Metadata};
use crate::kernel::{self, KernelError};

/// Environment variable naming the agent binary to use.
pub const AGENT_ENV: &str = "HYPERCONTAINER_AGENT";
/// File name of the agent in the cache.
pub const AGENT_NAME: &str = "hypercontainer-agent";

/// Errors finding or packing the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `$HYPERCONTAINER_AGENT` names a file that does not exist.
    #[error("{AGENT_ENV} names {0}, which does not exist")]
    EnvPathMissing(PathBuf),
    /// No agent has been built into the cache.
    #[error(
        "no guest agent at {0}: build it with `cargo xtask agent`, or set {AGENT_ENV} to a \
         static hypercontainer-agent binary"
    )]
    NotBuilt(PathBuf),
    /// The cache directory is unknown.
    #[error("cannot locate the cache directory")]
    Cache(#[source] KernelError),
    /// The file is not an x86-64 ELF executable.
    #[error("{0} is not an x86-64 ELF executable: rebuild the agent with `cargo xtask agent`")]
    NotElf(PathBuf),
    /// The agent is dynamically linked (the initramfs has no libraries).
    #[error(
        "{0} is dynamically linked; the guest has no shared libraries: build the static agent \
         with `cargo xtask agent`"
    )]
    NotStatic(PathBuf),
    /// Reading or writing a file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Packing the initramfs failed.
    #[error("packing the agent initramfs")]
    Pack(#[source] InitramfsError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, AgentError>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_owned();
    move |source| AgentError::Io { op, path, source }
}

/// The directory of agent files in the cache.
pub fn agent_cache_dir() -> Result<PathBuf> {
    Ok(kernel::cache_dir()
        .map_err(AgentError::Cache)?
        .join("agent"))
}

/// The agent to use: `$HYPERCONTAINER_AGENT` if set, else the one
/// `cargo xtask agent` installed in the cache.
///
/// ```no_run
/// let agent = hypercontainer::guest::default_agent()?;
/// println!("agent: {}", agent.display());
/// # Ok::<(), hypercontainer::guest::AgentError>(())
/// ```
pub fn default_agent() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(AgentError::EnvPathMissing(p))
        };
    }
    let p = agent_cache_dir()?.join(AGENT_NAME);
    if p.is_file() {
        Ok(p)
    } else {
        Err(AgentError::NotBuilt(p))
    }
}

/// Checks that `bytes` are a static x86-64 ELF executable (no `PT_INTERP`).
pub fn check_static_elf(path: &Path, bytes: &[u8]) -> Result<()> {
    let not_elf = || AgentError::NotElf(path.to_owned());
    let u16_at = |o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
    };
    // ELF64, little endian, x86-64 (62), executable or PIE.
    if bytes.get(..4) != Some(b"\x7fELF".as_slice())
        || bytes.get(4) != Some(&2)
        || bytes.get(5) != Some(&1)
        || u16_at(18) != Some(62)
        || !matches!(u16_at(16), Some(2 | 3))
    {
        return Err(not_elf());
    }
    let phoff = u64_at(32).ok_or_else(not_elf)?;
    let phentsize = u16_at(54).ok_or_else(not_elf)? as usize;
    let phnum = u16_at(56).ok_or_else(not_elf)? as usize;
    if phentsize < 56 {
        return Err(not_elf());
    }
    for i in 0..phnum {
        let off = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * phentsize))
            .ok_or_else(not_elf)?;
        if bytes.len() < off.saturating_add(phentsize) {
            return Err(not_elf());
        }
        if u32_at(off) == Some(3) {
            return Err(AgentError::NotStatic(path.to_owned()));
        }
    }
    Ok(())
}

/// Writes the agent initramfs: `/init` (the agent) and `/dev/console`.
pub fn write_initramfs<W: Write>(agent: &[u8], out: W) -> Result<W> {
    let mut w = CpioWriter::new(out);
    w.dir("dev", Metadata::new(0o755))
        .and_then(|w| w.char_device("dev/console", Metadata::new(0o600), 5, 1))
        .and_then(|w| w.dir("proc", Metadata::new(0o755)))
        .and_then(|w| w.dir("sys", Metadata::new(0o755)))
        .and_then(|w| w.file("init", Metadata::new(0o755), agent))
        .map_err(AgentError::Pack)?;
    w.finish().map_err(AgentError::Pack)
}

/// A packed agent initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInitramfs {
    /// The archive.
    pub path: PathBuf,
    /// SHA-256 of the agent binary, hex.
    pub agent_digest: String,
}

type FileKey = (PathBuf, PathBuf, u64, u64, i64, i64, u64);

fn memo() -> &'static Mutex<HashMap<FileKey, AgentInitramfs>> {
    static MEMO: OnceLock<Mutex<HashMap<FileKey, AgentInitramfs>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The initramfs for `agent`, packed into the cache on first use. Checks
/// that the agent is a static x86-64 executable.
pub fn agent_initramfs(agent: &Path) -> Result<AgentInitramfs> {
    agent_initramfs_in(agent, &agent_cache_dir()?.join("initramfs"))
}

/// Like [`agent_initramfs`], caching in `dir`.
pub fn agent_initramfs_in(agent: &Path, dir: &Path) -> Result<AgentInitramfs> {
    let meta = std::fs::metadata(agent).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::NotBuilt(agent.to_owned())
        } else {
            AgentError::Io {
                op: "reading",
                path: agent.to_owned(),
                source: e,
            }
        }
    })?;
    // Same file, unchanged since we last looked: reuse without rehashing.
    let key: FileKey = (
        dir.to_owned(),
        agent.to_owned(),
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.size(),
    );
    if let Some(hit) = memo().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        if hit.path.is_file() {
            return Ok(hit.clone());
        }
    }
    let mut bytes = Vec::new();
    std::fs::File::open(agent)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err("reading", agent))?;
    check_static_elf(agent, &bytes)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let path = dir.join(format!("{}.cpio", &digest[..32]));
    if !path.is_file() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let tmp = dir.join(format!(
            ".{}.{}.{:?}.tmp",
            &digest[..32],
            std::process::id(),
            std::thread::current().id()
        ));
        let res = (|| {
            let f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let w = write_initramfs(&bytes, BufWriter::new(f))?;
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .map_err(io_err("writing", &tmp))?;
            f.sync_all().map_err(io_err("syncing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res?;
    }
    let out = AgentInitramfs {
        path,
        agent_digest: digest,
    };
    memo()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal static ELF64 executable header with one PT_LOAD (or
    /// PT_INTERP) program header.
    fn elf(ptype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b
    }

    #[test]
    fn static_check() {
        let p = Path::new("a");
        check_static_elf(p, &elf(1)).unwrap();
        assert!(matches!(
            check_static_elf(p, &elf(3)),
            Err(AgentError::NotStatic(_))
        ));
        assert!(matches!(
            check_static_elf(p, b"#!/bin/sh\n"),
            Err(AgentError::NotElf(_))
        ));
        let mut truncated = elf(1);
        truncated.truncate(80);
        assert!(matches!(
            check_static_elf(p, &truncated),
            Err(AgentError::NotElf(_))
        ));
        let e = check_static_elf(p, &elf(3)).unwrap_err();
        assert!(e.to_string().contains("cargo xtask agent"), "{e}");
    }

    #[test]
    fn packs_once_per_digest() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, elf(1)).unwrap();
        let cache = dir.path().join("cache");
        let a = agent_initramfs_in(&agent, &cache).unwrap();
        let b = agent_initramfs_in(&agent, &cache).unwrap();
        assert_eq!(a, b);
        let entries = crate::initramfs::parse(&std::fs::read(&a.path).unwrap()).unwrap();
        assert!(entries.contains_key("init"));
        assert!(entries.contains_key("dev/console"));
        // A changed agent gets another archive.
        let mut other = elf(1);
        other.push(0);
        std::fs::write(&agent, other).unwrap();
        let c = agent_initramfs_in(&agent, &cache).unwrap();
        assert_ne!(c.path, a.path);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
        // A missing agent says how to build one.
        let e = agent_initramfs_in(&dir.path().join("nope"), &cache).unwrap_err();
        assert!(e.to_string().contains("cargo xtask agent"), "{e}");
    }
}
