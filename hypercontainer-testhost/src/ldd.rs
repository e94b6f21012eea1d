//! The shared libraries an executable needs, as `ldd` lists them.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Parses `ldd` output into the absolute paths of the libraries it lists,
/// including the dynamic loader. A library reported as `not found` is an
/// error naming it.
pub fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        let path = if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                return Err(format!("{} not found", name.trim()));
            }
            rest.split_whitespace().next().unwrap_or_default()
        } else {
            line.split_whitespace().next().unwrap_or_default()
        };
        // Virtual objects like linux-vdso.so.1 have no path.
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Runs `ldd` on `exe`. A static executable or a script needs nothing.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            what: format!("running ldd on {}", exe.display()),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::Ldd {
            exe: exe.to_path_buf(),
            reason: format!("ldd failed: {}", stderr.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|reason| Error::Ldd {
        exe: exe.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typical_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc3a5f2000)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f2b8c000000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b8be00000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f2b8c5b0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b8be00000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn static_and_missing() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd("\tlibfoo.so.3 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.3"), "{err}");
    }

    #[test]
    fn real_ldd_on_a_dynamic_binary() {
        let Ok(libs) = shared_libraries(Path::new("/bin/sh")) else {
            return; // no ldd on this system
        };
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        assert!(libs.iter().all(|l| l.is_absolute()));
    }
}
