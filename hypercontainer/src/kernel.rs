//! Where the guest kernel lives.
//!
//! The project builds its own minimal guest kernel (`cargo xtask kernel`)
//! into a cache outside the source tree:
//! `<cache>/kernel/<key>/{vmlinux,bzImage}`, where `<key>` hashes the config
//! fragment and the kernel source version, and `<cache>/kernel/default`
//! points at the newest build. `<cache>` is `$HYPERCONTAINER_CACHE_DIR`,
//! else `$XDG_CACHE_HOME/hypercontainer`, else `$HOME/.cache/hypercontainer`.
//!
//! `$HYPERCONTAINER_KERNEL` overrides the default kernel image path.

use std::path::{Path, PathBuf};

/// Environment variable naming the guest kernel image to boot.
pub const KERNEL_ENV: &str = "HYPERCONTAINER_KERNEL";
/// Environment variable naming the SDK's cache directory.
pub const CACHE_DIR_ENV: &str = "HYPERCONTAINER_CACHE_DIR";

/// Errors finding the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `$HYPERCONTAINER_KERNEL` names a file that does not exist.
    #[error("{KERNEL_ENV} names {0}, which does not exist")]
    EnvPathMissing(PathBuf),
    /// No kernel has been built into the cache.
    #[error(
        "no guest kernel at {0}: build it with `cargo xtask kernel` \
         (about 5 minutes the first time), or set {KERNEL_ENV} to a vmlinux or bzImage"
    )]
    NotBuilt(PathBuf),
    /// Neither a cache directory nor a home directory is known.
    #[error("cannot locate the cache directory: set {CACHE_DIR_ENV} or HOME")]
    NoCacheDir,
}

/// The SDK's cache directory (kernel builds, image layers).
pub fn cache_dir() -> Result<PathBuf, KernelError> {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, KernelError> {
    let nonempty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = nonempty(CACHE_DIR_ENV) {
        return Ok(dir);
    }
    if let Some(dir) = nonempty("XDG_CACHE_HOME") {
        return Ok(dir.join("hypercontainer"));
    }
    nonempty("HOME")
        .map(|home| home.join(".cache").join("hypercontainer"))
        .ok_or(KernelError::NoCacheDir)
}

/// The directory holding the default kernel build (`vmlinux`, `bzImage`).
pub fn default_kernel_dir() -> Result<PathBuf, KernelError> {
    Ok(cache_dir()?.join("kernel").join("default"))
}

/// The guest kernel to boot by default: `$HYPERCONTAINER_KERNEL` if set,
/// else the PVH `vmlinux` of the newest cached build.
///
/// ```no_run
/// let kernel = hypercontainer::kernel::default_kernel()?;
/// println!("booting {}", kernel.display());
/// # Ok::<(), hypercontainer::kernel::KernelError>(())
/// ```
pub fn default_kernel() -> Result<PathBuf, KernelError> {
    if let Some(path) = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(KernelError::EnvPathMissing(path))
        };
    }
    existing(default_kernel_dir()?.join("vmlinux"))
}

fn existing(path: PathBuf) -> Result<PathBuf, KernelError> {
    if Path::new(&path).is_file() {
        Ok(path)
    } else {
        Err(KernelError::NotBuilt(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [
            (CACHE_DIR_ENV, "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(&all)).unwrap(), PathBuf::from("/c"));
        assert_eq!(
            cache_dir_from(env(&all[1..])).unwrap(),
            PathBuf::from("/x/hypercontainer")
        );
        assert_eq!(
            cache_dir_from(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.cache/hypercontainer")
        );
        assert!(matches!(
            cache_dir_from(env(&[])),
            Err(KernelError::NoCacheDir)
        ));
    }

    #[test]
    fn missing_kernel_says_how_to_build() {
        let err = existing(PathBuf::from("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("cargo xtask kernel"), "{err}");
    }
}
