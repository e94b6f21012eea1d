//! cgroup v2 limits per container, inside the guest.
//!
//! In a VM the agent mounts the unified hierarchy at `/sys/fs/cgroup` and
//! enables every controller it needs (cpu, cpuset, memory, pids) for the
//! root's children; the agent itself stays in the root cgroup, which the
//! "no internal processes" rule exempts. Each container gets a child
//! cgroup, `/sys/fs/cgroup/<name>`, whose limits come from the spec's
//! `linux.resources`, translated as runc and crun translate them for
//! cgroup v2:
//!
//! | OCI                          | cgroup v2 file                  |
//! |------------------------------|---------------------------------|
//! | `memory.limit`               | `memory.max` (-1: `max`)        |
//! | `memory.reservation`         | `memory.low`                    |
//! | `memory.swap` (memory+swap)  | `memory.swap.max` = swap - limit|
//! | `cpu.quota` / `cpu.period`   | `cpu.max` (`max` when no quota) |
//! | `cpu.shares`                 | `cpu.weight` = 1 + (shares - 2) * 9999 / 262142 |
//! | `cpu.cpus` / `cpu.mems`      | `cpuset.cpus` / `cpuset.mems`   |
//! | `pids.limit`                 | `pids.max` (<= 0: `max`)        |
//! | `unified`                    | written as given                |
//!
//! `memory.oom.group` is set, so that an OOM kill takes the whole container
//! (its init included) rather than one victim, as runc does on cgroup v2;
//! [`Cgroup::oom_killed`] reads `memory.events`. The child process joins
//! its cgroup itself before `execve`, by writing `0` to `cgroup.procs`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercontainer_protocol::oci;

/// Errors of cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent has no cgroup hierarchy to enforce limits in.
    #[error(
        "this agent has no cgroup v2 hierarchy, so it cannot enforce memory, CPU or pids \
         limits (a host-tier agent never has one)"
    )]
    NoHierarchy,
    /// A limit needs a controller the kernel does not offer.
    #[error(
        "the {controller} controller is missing, needed for {file}: build the guest kernel \
         with {option}"
    )]
    NoController {
        /// The controller.
        controller: &'static str,
        /// The file the limit goes to.
        file: String,
        /// The kernel option that provides it.
        option: &'static str,
    },
    /// A spec value is invalid (a bad `unified` key, swap below memory).
    #[error("invalid resource limit: {0}")]
    Invalid(String),
    /// A cgroup file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where the unified hierarchy is mounted in a VM.
pub const MOUNT_POINT: &str = "/sys/fs/cgroup";

/// Controllers enabled for containers, with the kernel option of each.
const CONTROLLERS: [(&str, &str); 4] = [
    (
        "cpu",
        "CONFIG_CGROUP_SCHED, CONFIG_FAIR_GROUP_SCHED and CONFIG_CFS_BANDWIDTH",
    ),
    ("cpuset", "CONFIG_CPUSETS"),
    ("memory", "CONFIG_MEMCG"),
    ("pids", "CONFIG_CGROUP_PIDS"),
];

/// The agent's cgroup hierarchy.
#[derive(Debug)]
pub struct Hierarchy {
    root: PathBuf,
    /// The controllers enabled for children.
    enabled: Vec<String>,
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

/// `cpu.shares` (2..262144) as `cpu.weight` (1..10000), the conversion
/// runc and crun use.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// The (file, value) writes of `r`, in order.
pub fn writes(r: &oci::LinuxResources) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let max = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            out.push(("memory.max".into(), max(l)));
        }
        if let Some(res) = m.reservation() {
            out.push(("memory.low".into(), max(res)));
        }
        if let Some(swap) = m.swap() {
            let v = match (swap, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(Error::Invalid(format!(
                            "memory+swap limit {s} is below the memory limit {l}"
                        )));
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            out.push(("memory.swap.max".into(), v));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            out.push(("cpu.weight".into(), shares_to_weight(s).to_string()));
        }
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().unwrap_or(100_000);
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            out.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(cpus) = c.cpus() {
            out.push(("cpuset.cpus".into(), cpus.clone()));
        }
        if let Some(mems) = c.mems() {
            out.push(("cpuset.mems".into(), mems.clone()));
        }
    }
    if let Some(p) = r.pids() {
        out.push((
            "pids.max".into(),
            max(if p.limit() <= 0 { -1 } else { p.limit() }),
        ));
    }
    for (k, v) in r.unified().iter().flatten() {
        let ok = !k.is_empty()
            && k.contains('.')
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !k.starts_with("cgroup.");
        if !ok {
            return Err(Error::Invalid(format!(
                "unified key {k:?} is not a controller file"
            )));
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

/// The controller a cgroup file belongs to (`memory.max` -> `memory`).
fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

impl Hierarchy {
    /// In a VM: mounts cgroup2 at [`MOUNT_POINT`] (unless mounted) and
    /// enables the available controllers for children.
    pub fn mount_in_vm() -> Result<Self> {
        let root = Path::new(MOUNT_POINT);
        if !root.join("cgroup.controllers").exists() {
            fs::create_dir_all(root).map_err(io_err("creating /sys/fs/cgroup"))?;
            crate::sys::mount(
                "cgroup2",
                root,
                Some("cgroup2"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("nsdelegate"),
            )
            .map_err(io_err("mounting cgroup2 on /sys/fs/cgroup"))?;
        }
        Self::at(root)
    }

    /// An existing cgroup2 directory whose children hold containers;
    /// enables what it can of [`CONTROLLERS`] there.
    pub fn at(root: &Path) -> Result<Self> {
        let available = fs::read_to_string(root.join("cgroup.controllers")).map_err(io_err(
            format!("reading {}/cgroup.controllers", root.display()),
        ))?;
        let wanted: Vec<&str> = CONTROLLERS
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        if !wanted.is_empty() {
            let line = wanted
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            fs::write(root.join("cgroup.subtree_control"), line)
                .map_err(io_err("enabling cgroup controllers"))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            enabled: wanted.into_iter().map(str::to_string).collect(),
        })
    }

    /// Makes the cgroup of container `name` and writes its limits.
    pub fn create(&self, name: &str, resources: Option<&oci::LinuxResources>) -> Result<Cgroup> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(Error::Invalid(format!("cgroup name {name:?}")));
        }
        let list = resources.map(writes).transpose()?.unwrap_or_default();
        for (file, _) in &list {
            let c = controller_of(file);
            if !self.enabled.iter().any(|e| e == c) {
                let option = CONTROLLERS
                    .iter()
                    .find(|(n, _)| *n == c)
                    .map_or("the controller's option", |(_, o)| *o);
                let controller = CONTROLLERS
                    .iter()
                    .find(|(n, _)| *n == c)
                    .map_or("a", |(n, _)| *n);
                return Err(Error::NoController {
                    controller,
                    file: file.clone(),
                    option,
                });
            }
        }
        let path = self.root.join(name);
        match fs::create_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_err(format!("creating cgroup {}", path.display()))(e))
            }
            _ => {}
        }
        let cg = Cgroup { path };
        if self.enabled.iter().any(|e| e == "memory") {
            cg.write("memory.oom.group", "1")?;
        }
        for (file, value) in &list {
            cg.write(file, value)?;
        }
        Ok(cg)
    }
}

impl Cgroup {
    fn write(&self, file: &str, value: &str) -> Result<()> {
        fs::write(self.path.join(file), value).map_err(io_err(format!(
            "writing {value:?} to {}/{file}",
            self.path.display()
        )))
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the OOM killer struck in it (`memory.events`: `oom_kill` or
    /// `oom_group_kill` above zero).
    pub fn oom_killed(&self) -> bool {
        let events = fs::read_to_string(self.path.join("memory.events")).unwrap_or_default();
        events.lines().any(|l| {
            let mut it = l.split_whitespace();
            matches!(it.next(), Some("oom_kill" | "oom_group_kill"))
                && it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) > 0
        })
    }

    /// What its processes use: (`memory.current` in bytes, `cpu.stat`
    /// `usage_usec`, `pids.current`); a value its controller does not give
    /// is 0.
    pub fn usage(&self) -> (u64, u64, u32) {
        let read = |f: &str| fs::read_to_string(self.path.join(f)).unwrap_or_default();
        let memory = read("memory.current").trim().parse().unwrap_or(0);
        let cpu = read("cpu.stat")
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let pids = read("pids.current").trim().parse().unwrap_or(0);
        (memory, cpu, pids)
    }

    /// Kills what is left in it, waits (up to a second) until it is empty,
    /// and removes it.
    pub fn remove(self) -> Result<()> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::remove_dir(&self.path).map_err(io_err(format!("removing {}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> oci::LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn oci_limits_become_cgroup_v2_writes() {
        let r = resources(
            r#"{"memory": {"limit": 67108864, "reservation": 1048576, "swap": 134217728},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                "pids": {"limit": 10},
                "unified": {"memory.high": "50000000"}}"#,
        );
        let w = writes(&r).unwrap();
        let get = |f: &str| w.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.low"), Some("1048576"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0-1"));
        assert_eq!(get("cpuset.mems"), Some("0"));
        assert_eq!(get("pids.max"), Some("10"));
        assert_eq!(get("memory.high"), Some("50000000"));
    }

    #[test]
    fn unlimited_values_are_max() {
        let r = resources(
            r#"{"memory": {"limit": -1, "swap": -1}, "cpu": {"period": 50000}, "pids": {"limit": 0}}"#,
        );
        let w = writes(&r).unwrap();
        assert!(w.contains(&("memory.max".into(), "max".into())));
        assert!(w.contains(&("memory.swap.max".into(), "max".into())));
        assert!(w.contains(&("cpu.max".into(), "max 50000".into())));
        assert!(w.contains(&("pids.max".into(), "max".into())));
    }

    #[test]
    fn share_conversion_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1, "clamped");
    }

    #[test]
    fn bad_values_are_refused() {
        let r = resources(r#"{"memory": {"limit": 100, "swap": 50}}"#);
        assert!(matches!(writes(&r), Err(Error::Invalid(_))));
        for key in ["../../x", "cgroup.procs", "noperiod", ""] {
            let r = resources(&format!(r#"{{"unified": {{"{key}": "1"}}}}"#));
            assert!(matches!(writes(&r), Err(Error::Invalid(_))), "{key}");
        }
    }

    #[test]
    fn a_directory_stands_in_for_a_hierarchy() {
        // File-level behaviour only (plain files, not cgroupfs).
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let h = Hierarchy::at(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        let r = resources(r#"{"memory": {"limit": 1000000}, "pids": {"limit": 5}}"#);
        let cg = h.create("c1", Some(&r)).unwrap();
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.max")).unwrap(),
            "1000000"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.oom.group")).unwrap(),
            "1"
        );
        assert!(!cg.oom_killed());
        fs::write(
            cg.path().join("memory.events"),
            "low 0\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
        // cpuset is not enabled there.
        let r = resources(r#"{"cpu": {"cpus": "0"}}"#);
        assert!(matches!(
            h.create("c2", Some(&r)),
            Err(Error::NoController {
                controller: "cpuset",
                ..
            })
        ));
        assert!(h.create("../x", None).is_err());
    }
}
