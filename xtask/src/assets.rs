//! `cargo xtask testhost-assets`: Debian's cloud kernel and its kvm and tun
//! modules for the emulated KVM host, cached in
//! `<cache>/testhost/<version>-<modules>/` in the layout
//! `hypercontainer_testhost::HostAssets::from_dir` reads.

use crate::util::{fail, output, run, Error, IoContext, Result, Stage};
use hypercontainer_testhost::HostAssets;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The modules the emulated host loads; their dependencies come along.
/// `tun` gives the whole-VM net test its tap device; `virtiofs` mounts the
/// host directories shared into the emulated host (over virtio-pci, a module
/// there too). The network namespace tests build what CNI's bridge plugin
/// builds (`veth`, `bridge`) and redirect with tc (`sch_ingress`, `cls_u32`,
/// `act_mirred`).
const WANTED_MODULES: &[&str] = &[
    "kvm",
    "kvm_amd",
    "irqbypass",
    "tun",
    "virtiofs",
    "virtio_pci",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_u32",
    "act_mirred",
];

/// The kernel version `linux-image-cloud-amd64` depends on, e.g.
/// `6.1.0-28` (from `apt-cache depends` output).
pub fn parse_cloud_version(apt_depends: &str) -> Option<String> {
    apt_depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        dep.strip_prefix("linux-image-")?
            .strip_suffix("-cloud-amd64")
            .map(str::to_string)
    })
}

fn resolve_version() -> Result<String> {
    let query = || output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]));
    let text = match query() {
        Ok(t) if parse_cloud_version(&t).is_some() => t,
        _ => {
            // Package lists may be missing on a fresh machine.
            crate::deps::apt_update()?;
            query()?
        }
    };
    parse_cloud_version(&text).ok_or_else(|| {
        Error::Failed(format!(
            "cannot tell the cloud kernel version from `apt-cache depends linux-image-cloud-amd64`:\n{text}"
        ))
    })
}

/// Orders modules so that each comes after its dependencies.
/// `deps` maps a module name to the names it depends on.
pub fn load_order(wanted: &[&str], deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        if out.iter().any(|o| o == m) {
            return Ok(());
        }
        if path.iter().any(|p| p == m) {
            return fail(format!("module dependency cycle through {m}"));
        }
        path.push(m.to_string());
        for d in deps.get(m).map(Vec::as_slice).unwrap_or_default() {
            visit(d, deps, path, out)?;
        }
        path.pop();
        out.push(m.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for m in wanted {
        visit(m, deps, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn module_name(file: &Path) -> String {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let base = name.split(".ko").next().unwrap_or_default();
    base.replace('-', "_")
}

fn find_modules(dir: &Path, found: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_modules(&p, found);
        } else if p.to_string_lossy().contains(".ko") {
            found.insert(module_name(&p), p);
        }
    }
}

/// Ensures the assets are cached and returns them.
pub fn ensure() -> Result<HostAssets> {
    let stage = Stage::start("testhost-assets: Debian cloud kernel + kvm and tun modules");
    let res = ensure_inner(&stage);
    stage.finish(res.is_ok());
    res
}

fn ensure_inner(stage: &Stage) -> Result<HostAssets> {
    let version = resolve_version()?;
    let root = hypercontainer::kernel::cache_dir()?.join("testhost");
    // Keyed by the module set too: adding a module fetches afresh.
    let dest = root.join(format!("{version}-{}", WANTED_MODULES.join("+")));
    if let Ok(assets) = HostAssets::from_dir(&dest) {
        stage.note(format!("cached: {}", dest.display()));
        return Ok(assets);
    }
    let package = format!("linux-image-{version}-cloud-amd64");
    stage.note(format!("downloading {package}"));
    let tmp = root.join(format!(".fetch-{version}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let res = fetch(stage, &tmp, &package, &version);
    let res = res.and_then(|()| match fs::rename(tmp.join("out"), &dest) {
        Err(_) if HostAssets::from_dir(&dest).is_ok() => Ok(()),
        r => r.ctx(|| format!("moving assets to {}", dest.display())),
    });
    let _ = fs::remove_dir_all(&tmp);
    res?;
    Ok(HostAssets::from_dir(&dest)?)
}

fn fetch(stage: &Stage, tmp: &Path, package: &str, version: &str) -> Result<()> {
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(tmp))?;
    let deb = fs::read_dir(tmp)
        .ctx(|| "listing the download dir".into())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::Failed(format!("apt-get download left no .deb for {package}")))?;
    let x = tmp.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let out = tmp.join("out");
    fs::create_dir_all(out.join("modules")).ctx(|| "creating the assets dir".into())?;
    let vmlinuz = fs::read_dir(x.join("boot"))
        .ctx(|| "listing boot/ of the package".into())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Error::Failed(format!("{package} has no boot/vmlinuz-*")))?;
    fs::copy(&vmlinuz, out.join("vmlinuz")).ctx(|| "copying vmlinuz".into())?;

    let mut files = BTreeMap::new();
    find_modules(&x.join("lib/modules"), &mut files);
    find_modules(&x.join("usr/lib/modules"), &mut files);
    let mut deps = BTreeMap::new();
    let mut todo: Vec<String> = WANTED_MODULES.iter().map(|s| s.to_string()).collect();
    while let Some(m) = todo.pop() {
        if deps.contains_key(&m) {
            continue;
        }
        let file = files
            .get(&m)
            .ok_or_else(|| Error::Failed(format!("{package} has no module {m}")))?;
        let d: Vec<String> = output(Command::new("modinfo").args(["-F", "depends"]).arg(file))?
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect();
        todo.extend(d.iter().cloned());
        deps.insert(m, d);
    }
    let order = load_order(WANTED_MODULES, &deps)?;
    let mut listing = String::new();
    for m in &order {
        let src = &files[m];
        let name = format!("{m}.ko");
        let dst = out.join("modules").join(&name);
        let s = src.to_string_lossy();
        if s.ends_with(".ko.xz") {
            let data = output_bytes(Command::new("xz").arg("-dc").arg(src))?;
            fs::write(&dst, data).ctx(|| format!("writing {name}"))?;
        } else if s.ends_with(".ko.zst") {
            let data = output_bytes(Command::new("zstd").arg("-dc").arg(src))?;
            fs::write(&dst, data).ctx(|| format!("writing {name}"))?;
        } else {
            fs::copy(src, &dst).ctx(|| format!("copying {name}"))?;
        }
        listing.push_str(&name);
        listing.push('\n');
    }
    fs::write(out.join("modules.order"), &listing).ctx(|| "writing modules.order".into())?;
    fs::write(out.join("version"), format!("{version}\n")).ctx(|| "writing version".into())?;
    stage.note(format!(
        "kernel {version}, modules in load order: {}",
        order.join(" ")
    ));
    Ok(())
}

fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .ctx(|| format!("running {}", crate::util::show(cmd)))?;
    if !out.status.success() {
        return fail(format!(
            "`{}` failed: {}",
            crate::util::show(cmd),
            out.status
        ));
    }
    Ok(out.stdout)
}

/// `cargo xtask testhost-assets`.
pub fn cmd() -> Result<()> {
    let a = ensure()?;
    println!("{}", a.kernel.display());
    for m in &a.modules {
        println!("{}", m.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_version_from_apt_cache() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-28-cloud-amd64\n";
        assert_eq!(parse_cloud_version(text).as_deref(), Some("6.1.0-28"));
        assert_eq!(parse_cloud_version("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn dependencies_load_first() {
        let mut deps = BTreeMap::new();
        deps.insert(
            "kvm_amd".to_string(),
            vec!["kvm".to_string(), "ccp".to_string()],
        );
        deps.insert("kvm".to_string(), vec!["irqbypass".to_string()]);
        deps.insert("ccp".to_string(), vec![]);
        deps.insert("irqbypass".to_string(), vec![]);
        let order = load_order(&["kvm_amd", "irqbypass"], &deps).unwrap();
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
        deps.insert("irqbypass".to_string(), vec!["kvm_amd".to_string()]);
        assert!(load_order(&["kvm_amd"], &deps).is_err());
        assert_eq!(module_name(Path::new("/x/kvm-amd.ko.xz")), "kvm_amd");
    }
}
