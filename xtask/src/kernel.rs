//! `cargo xtask kernel`: builds the guest kernel from Debian's
//! `linux-source-6.1` into the cache, keyed by fragment + source version.
//!
//! Layout (shared with `hypercontainer::kernel`):
//! `<cache>/kernel/<key>/{vmlinux,bzImage,config}` and
//! `<cache>/kernel/default -> <key>`.
//!
//! `HYPERCONTAINER_KERNEL_FRAGMENT=FILE` builds from another fragment
//! instead (a variant for a measurement, e.g. the repository's fragment
//! without one block of options): the build is keyed by that file's bytes
//! like any other, and `default` keeps pointing at the repository's build.
//! [`ensure_with`] builds another kind of variant for a tool that needs
//! one (the file-sharing benchmark's 9p peer): the repository's fragment
//! with the lines of an additive fragment appended, keyed by the merged
//! bytes, `default` again left alone.

use crate::util::{fail, jobs, output, run, IoContext, Result, Stage};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian package holding the kernel source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The kernel source tarball installed by [`SOURCE_PACKAGE`].
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    /// PVH-bootable ELF image.
    pub vmlinux: PathBuf,
    /// Compressed bzImage.
    pub bzimage: PathBuf,
}

/// The config fragment kept in the repository.
pub fn fragment_path() -> PathBuf {
    crate::util::repo_root().join("guest/kernel/config.fragment")
}

/// Names a fragment file to build instead of [`fragment_path`], leaving
/// `<cache>/kernel/default` alone.
pub const FRAGMENT_ENV: &str = "HYPERCONTAINER_KERNEL_FRAGMENT";

/// The fragment to build: [`FRAGMENT_ENV`]'s file if set (and whether it
/// is such a variant), else the repository's.
fn chosen_fragment() -> (PathBuf, bool) {
    match std::env::var_os(FRAGMENT_ENV).filter(|v| !v.is_empty()) {
        Some(v) => (PathBuf::from(v), true),
        None => (fragment_path(), false),
    }
}

/// The cache key: short sha256 of the fragment bytes and the source version.
pub fn cache_key(fragment: &[u8], source_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(fragment);
    h.update(b"\0");
    h.update(source_version.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// What a fragment asks for: option name -> wanted value (`None` = off).
pub fn parse_fragment(text: &str) -> BTreeMap<String, Option<String>> {
    let mut wanted = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                wanted.insert(format!("CONFIG_{name}"), None);
            }
        } else if line.starts_with("CONFIG_") {
            if let Some((name, value)) = line.split_once('=') {
                let v = (value != "n").then(|| value.to_string());
                wanted.insert(name.to_string(), v);
            }
        }
    }
    wanted
}

/// Fragment lines that did not make it into a `.config`, with what is there.
pub fn unmet_options(fragment: &str, config: &str) -> Vec<String> {
    let have: BTreeMap<&str, &str> = config
        .lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut bad = Vec::new();
    for (name, want) in parse_fragment(fragment) {
        let got = have.get(name.as_str()).copied();
        let ok = match (&want, got) {
            (None, None) | (None, Some("n")) => true,
            (Some(w), Some(g)) => w == g,
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "{name}={} (the .config has {})",
                want.as_deref().unwrap_or("n"),
                got.map(|g| format!("{name}={g}"))
                    .unwrap_or_else(|| "it unset".into())
            ));
        }
    }
    bad
}

fn source_version() -> Result<String> {
    let v = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))?;
    if v.trim().is_empty() {
        return fail(format!(
            "{SOURCE_PACKAGE} is not installed (run `cargo xtask deps`)"
        ));
    }
    Ok(v.trim().to_string())
}

/// Builds the guest kernel if the cache has no build for the current key,
/// and points `<cache>/kernel/default` at it.
pub fn ensure() -> Result<BuiltKernel> {
    let stage = Stage::start("kernel: guest kernel");
    let res = chosen_fragment_bytes()
        .and_then(|(fragment, variant)| ensure_inner(&stage, &fragment, variant));
    stage.finish(res.is_ok());
    res
}

/// Builds (or finds cached) the repository's fragment followed by the
/// lines of `extra` (options a tool adds, e.g. `guest/kernel/bench-9p.fragment`),
/// keyed by the merged bytes; `<cache>/kernel/default` is left alone, and
/// [`FRAGMENT_ENV`] is not consulted.
pub fn ensure_with(extra: &Path) -> Result<BuiltKernel> {
    let stage = Stage::start(format!("kernel: guest kernel + {}", fragment_label(extra)));
    let res =
        merged_fragment(extra).and_then(|f| ensure_inner(&stage, &f, Some(fragment_label(extra))));
    stage.finish(res.is_ok());
    res
}

/// The repository's fragment, then `extra`'s lines (later lines win in
/// `merge_config.sh`).
fn merged_fragment(extra: &Path) -> Result<Vec<u8>> {
    let base = fragment_path();
    let mut merged = fs::read(&base).ctx(|| format!("reading {}", base.display()))?;
    if !merged.ends_with(b"\n") {
        merged.push(b'\n');
    }
    merged.extend(fs::read(extra).ctx(|| format!("reading {}", extra.display()))?);
    Ok(merged)
}

fn fragment_label(path: &Path) -> String {
    path.strip_prefix(crate::util::repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// [`chosen_fragment`]'s bytes, and its name when it is a variant.
fn chosen_fragment_bytes() -> Result<(Vec<u8>, Option<String>)> {
    let (file, variant) = chosen_fragment();
    let bytes = fs::read(&file).ctx(|| format!("reading {}", file.display()))?;
    Ok((
        bytes,
        variant.then(|| format!("{FRAGMENT_ENV}={}", file.display())),
    ))
}

/// Builds `fragment` unless cached; `variant` names where a variant came
/// from (then `default` is not moved).
fn ensure_inner(stage: &Stage, fragment: &[u8], variant: Option<String>) -> Result<BuiltKernel> {
    let version = source_version()?;
    let key = cache_key(fragment, &version);
    let root = hypercontainer::kernel::cache_dir()?.join("kernel");
    fs::create_dir_all(&root).ctx(|| format!("creating {}", root.display()))?;
    let dest = root.join(&key);
    let built = BuiltKernel {
        vmlinux: dest.join("vmlinux"),
        bzimage: dest.join("bzImage"),
    };
    if built.vmlinux.is_file() && built.bzimage.is_file() {
        stage.note(format!("cached: {} (source {version})", dest.display()));
    } else {
        stage.note(format!(
            "building key {key} (source {SOURCE_PACKAGE} {version}); takes minutes"
        ));
        clean_stale_builds(&root);
        let tmp = root.join(format!(".build-{key}-{}", std::process::id()));
        let res = build(stage, &tmp, fragment, &dest);
        let _ = fs::remove_dir_all(&tmp);
        res?;
    }
    match variant {
        Some(from) => stage.note(format!(
            "variant {from}: built as key {key}; default left as it was"
        )),
        None => set_default(&root, &key)?,
    }
    Ok(built)
}

/// Removes build directories left by interrupted runs whose process is gone.
fn clean_stale_builds(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".build-") else {
            continue;
        };
        let alive = rest
            .rsplit('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn build(stage: &Stage, tmp: &Path, fragment_text: &[u8], dest: &Path) -> Result<()> {
    fs::create_dir_all(tmp).ctx(|| format!("creating {}", tmp.display()))?;
    // merge_config.sh reads a file: the bytes the key was made of.
    let fragment = tmp.join("config.fragment");
    fs::write(&fragment, fragment_text).ctx(|| format!("writing {}", fragment.display()))?;
    stage.note(format!("extracting {SOURCE_TARBALL}"));
    run(Command::new("tar")
        .arg("-xf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(tmp))?;
    let src = fs::read_dir(tmp)
        .ctx(|| format!("listing {}", tmp.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .ok_or_else(|| crate::util::Error::Failed(format!("no kernel tree in {SOURCE_TARBALL}")))?;
    stage.note("configuring: tinyconfig + fragment + olddefconfig");
    let log_path = tmp.join("build.log");
    let mut log = fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    quiet(&src, &mut log, Command::new("make").arg("tinyconfig"))?;
    quiet(
        &src,
        &mut log,
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment),
    )?;
    quiet(&src, &mut log, Command::new("make").arg("olddefconfig"))?;
    let config = fs::read_to_string(src.join(".config")).ctx(|| "reading .config".into())?;
    let bad = unmet_options(&String::from_utf8_lossy(fragment_text), &config);
    if !bad.is_empty() {
        return fail(format!(
            "these fragment lines did not stick (a dependency is probably missing):\n  {}",
            bad.join("\n  ")
        ));
    }
    stage.note(format!("make -j{} vmlinux bzImage", jobs()));
    make_with_progress(stage, &src, &mut log, &log_path)?;
    let out = tmp.join("out");
    fs::create_dir_all(&out).ctx(|| "creating output dir".into())?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        fs::copy(src.join(from), out.join(to)).ctx(|| format!("copying {from}"))?;
    }
    match fs::rename(&out, dest) {
        Ok(()) => Ok(()),
        // Another build of the same key finished first: keep its result.
        Err(_) if dest.join("vmlinux").is_file() => Ok(()),
        Err(e) => Err(e).ctx(|| format!("moving the build to {}", dest.display())),
    }
}

fn quiet(src: &Path, log: &mut fs::File, cmd: &mut Command) -> Result<()> {
    let out = cmd
        .current_dir(src)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {}", crate::util::show(cmd)))?;
    let _ = log.write_all(&out.stdout);
    let _ = log.write_all(&out.stderr);
    if !out.status.success() {
        return fail(format!(
            "`{}` failed: {}\n{}{}",
            crate::util::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn make_with_progress(
    stage: &Stage,
    src: &Path,
    log: &mut fs::File,
    log_path: &Path,
) -> Result<()> {
    let mut child = Command::new("make")
        .arg(format!("-j{}", jobs()))
        .args(["vmlinux", "bzImage"])
        .current_dir(src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| "starting make".into())?;
    // stderr and stdout both go to the log; stdout lines are counted.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t1 = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx2.send(line);
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let t2 = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let mut compiled = 0usize;
    let mut last = Instant::now();
    let mut tail: Vec<String> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                if line.trim_start().starts_with("CC ") || line.trim_start().starts_with("AS ") {
                    compiled += 1;
                }
                let _ = writeln!(log, "{line}");
                tail.push(line);
                if tail.len() > 60 {
                    tail.remove(0);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last.elapsed() >= Duration::from_secs(20) {
            stage.note(format!("{compiled} objects compiled"));
            last = Instant::now();
        }
    }
    let _ = t1.join();
    let _ = t2.join();
    let status = child.wait().ctx(|| "waiting for make".into())?;
    if !status.success() {
        return fail(format!(
            "kernel build failed ({status}); last lines of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        ));
    }
    stage.note(format!("{compiled} objects compiled, linked"));
    Ok(())
}

/// Points `<root>/default` at `<key>` atomically (symlink + rename).
fn set_default(root: &Path, key: &str) -> Result<()> {
    let link = root.join("default");
    if fs::read_link(&link).is_ok_and(|t| t == Path::new(key)) {
        return Ok(());
    }
    let tmp = root.join(format!(".default-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(key, &tmp).ctx(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, &link).ctx(|| format!("replacing {}", link.display()))
}

/// `cargo xtask kernel`.
pub fn cmd() -> Result<()> {
    let k = ensure()?;
    println!("{}", k.vmlinux.display());
    println!("{}", k.bzimage.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_both_inputs() {
        let a = cache_key(b"CONFIG_X=y\n", "6.1.1");
        assert_eq!(a.len(), 16);
        assert_ne!(a, cache_key(b"CONFIG_X=y\n", "6.1.2"));
        assert_ne!(a, cache_key(b"CONFIG_X=n\n", "6.1.1"));
        assert_eq!(a, cache_key(b"CONFIG_X=y\n", "6.1.1"));
    }

    #[test]
    fn a_variant_is_the_repository_fragment_then_the_extra_lines() {
        let extra = crate::util::repo_root().join("guest/kernel/bench-9p.fragment");
        let merged = String::from_utf8(merged_fragment(&extra).unwrap()).unwrap();
        let base = fs::read_to_string(fragment_path()).unwrap();
        assert!(merged.starts_with(&base));
        assert!(merged.ends_with(&fs::read_to_string(&extra).unwrap()));
        let wanted = parse_fragment(&merged);
        assert_eq!(wanted["CONFIG_9P_FS"].as_deref(), Some("y"));
        assert!(!parse_fragment(&base).contains_key("CONFIG_9P_FS"));
    }

    #[test]
    fn unmet_lines_are_listed() {
        let fragment =
            "# comment\nCONFIG_A=y\nCONFIG_B=n\n# CONFIG_C is not set\nCONFIG_D=y\nCONFIG_E=1\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_E=2\n";
        let bad = unmet_options(fragment, config);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("CONFIG_C=n"), "{bad:?}");
        assert!(bad[1].starts_with("CONFIG_D=y") && bad[1].contains("unset"));
        assert!(bad[2].contains("CONFIG_E=2"));
        assert!(unmet_options(fragment, "CONFIG_A=y\nCONFIG_D=y\nCONFIG_E=1\n").is_empty());
    }
}
