//! Containers of a [`Pod`](crate::pod::Pod): created, started, exec'd
//! into, stopped and removed while the pod runs.
//!
//! [`Pod::create`](crate::pod::Pod::create) prepares a [`Container`] from
//! a [`ContainerSpec`]: the image (imported when the pod did not preload
//! it), the process with Docker's rules, the volumes (shared with the
//! guest), and the confinement of the runtime spec (namespaces,
//! capabilities, seccomp, cgroup limits). [`Container::start`] asks the
//! agent to build its root filesystem and start its main process.
//!
//! A container's life: *created* (nothing in the guest yet), *running*,
//! *exited* (its main process ended; the pod and its other containers run
//! on; [`Container::exec`] is refused), *removed* ([`Container::remove`]:
//! the agent kills what still runs in it, unmounts its root and mounts
//! and deletes its cgroup; the host forgets its processes). Container ids
//! are never reused in a pod.

mod spec;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hypercontainer_protocol::{
    oci, ContainerId, Create, Process as ProtoProcess, ProcessId, Rootfs, Upper,
};

use crate::agent_client::{OutputReader, ProcessHandle, StdinWriter};
use crate::pod::shares::{self, share_path};
use crate::pod::watch::lock;
use crate::pod::PodInner;
use crate::sandbox::signal::parse_signal;
use crate::sandbox::{agent_err, Error, Exec, ImageRef, Output, Process, Result};
use crate::spec as conf;

pub use hypercontainer_protocol::ContainerStats;
pub use spec::ContainerSpec;

/// How long [`Container::remove`] waits for the agent.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Container::stats`] waits for the agent.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a container is in its life.
enum Phase {
    Created(Box<Pending>),
    Started(ProcessHandle),
    Removed,
}

/// What [`Container::start`] sends.
struct Pending {
    create: Create,
    stdout: Output,
    stderr: Output,
}

/// One container of a pod. See the [module docs](self). `Send + Sync`.
pub struct Container {
    pod: Weak<PodInner>,
    id: ContainerId,
    name: String,
    stdin_open: bool,
    stop_signal: i32,
    template: ProtoProcess,
    phase: Mutex<Phase>,
    /// Every process of the container the host tracks (main and execs).
    procs: Mutex<Vec<ProcessId>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Builds a container of `pod` from `spec` (see [`Pod::create`](crate::pod::Pod::create)).
pub(crate) fn create(
    pod: &Arc<PodInner>,
    spec: ContainerSpec,
    ends_pod: bool,
) -> Result<Container> {
    let pod_destinations: Vec<&str> = pod
        .pod_mounts
        .iter()
        .filter_map(|m| m.destination().to_str())
        .collect();
    spec.validate(&pod_destinations)?;
    let (id, name) = {
        let mut st = lock(&pod.state);
        let id = st.last_container + 1;
        let name = spec.name.clone().unwrap_or_else(|| format!("c{id}"));
        if st.names.contains_key(&name) {
            return Err(Error::Config(format!(
                "a container named {name:?} is already in the pod: remove it or pick another name"
            )));
        }
        st.last_container = id;
        st.names.insert(name.clone(), id);
        (id, name)
    };
    match prepare(pod, &spec, id, &name, ends_pod) {
        Ok((create, stop_signal)) => Ok(Container {
            pod: Arc::downgrade(pod),
            id,
            name,
            stdin_open: spec.stdin,
            stop_signal,
            template: create.process.clone(),
            phase: Mutex::new(Phase::Created(Box::new(Pending {
                create,
                stdout: spec.stdout,
                stderr: spec.stderr,
            }))),
            procs: Mutex::default(),
        }),
        Err(e) => {
            lock(&pod.state).names.remove(&name);
            Err(e)
        }
    }
}

/// The image, volumes, process and spec of a container: its `Create`.
fn prepare(
    pod: &PodInner,
    spec: &ContainerSpec,
    id: ContainerId,
    name: &String,
    ends_pod: bool,
) -> Result<(Create, i32)> {
    let (rootfs, config) = root_filesystem(pod, spec)?;
    let defaults = hypercontainer_image::process::process_defaults(&config, &spec.overrides)
        .map_err(Error::Process)?;
    let user = match &defaults.user.group {
        Some(g) => format!("{}:{g}", defaults.user.user),
        None => defaults.user.user.clone(),
    };
    let mut oci_spec = conf::container_spec(&spec.options, &user).map_err(Error::Spec)?;
    let mut mounts = oci_spec.mounts().clone().unwrap_or_default();
    mounts.extend(pod.pod_mounts.iter().cloned());
    for v in &spec.volumes {
        let dir = v.host_dir(&volume_data_dir(pod)?)?;
        let share = late_share(pod, "v", &dir, v.is_read_only())?;
        mounts.push(shares::bind_mount(v, &share)?);
    }
    oci_spec.set_mounts(Some(mounts));
    if !ends_pod {
        pod_namespaces(&mut oci_spec, pod.share_pid);
    }
    let process = ProtoProcess {
        argv: defaults.args.clone(),
        env: conf::container_env(&defaults.env, &pod.hostname, spec.tty.is_some()),
        cwd: defaults.working_dir.clone(),
        user,
        terminal: spec.tty.is_some(),
        window: spec.tty,
        ..ProtoProcess::default()
    };
    let stop_signal = defaults
        .stop_signal
        .as_deref()
        .and_then(parse_signal)
        .unwrap_or(libc::SIGTERM);
    let hosts = pod.hosts.as_ref().map(|base| with_names(base, pod));
    log::debug!("pod {}: container {id} ({name}) prepared", pod.id);
    Ok((
        Create {
            container: id,
            id: 0,
            ends_pod,
            rootfs,
            shares: Vec::new(),
            process,
            spec: oci_spec,
            hosts,
        },
        stop_signal,
    ))
}

/// The pod's `/etc/hosts` with a line `127.0.0.1 NAME` for every container
/// of the pod so far (this one included), in the order they were created:
/// a container reaches the ones before it by name, as Docker's links do.
fn with_names(base: &str, pod: &PodInner) -> String {
    let st = lock(&pod.state);
    let mut names: Vec<(&u32, &String)> = st.names.iter().map(|(n, id)| (id, n)).collect();
    names.sort();
    let mut out = base.to_string();
    for (_, name) in names {
        out.push_str(&format!("127.0.0.1\t{name}\n"));
    }
    out
}

/// The pod's containers share its IPC namespace, and its PID namespace
/// when asked: drop those from the container's own.
fn pod_namespaces(spec: &mut oci::Spec, share_pid: bool) {
    use oci::LinuxNamespaceType::{Ipc, Pid};
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != Ipc && !(share_pid && n.typ() == Pid));
        }
    }
}

fn volume_data_dir(pod: &PodInner) -> Result<std::path::PathBuf> {
    if pod.data_dir.as_os_str().is_empty() {
        return Ok(crate::volume::default_data_dir()?);
    }
    Ok(pod.data_dir.clone())
}

/// Shares `dir` with the running pod; the share's name.
fn late_share(pod: &PodInner, prefix: &str, dir: &std::path::Path, ro: bool) -> Result<String> {
    let handle = pod.fs.as_ref().ok_or_else(|| {
        Error::Config(
            "the pod has no virtio-fs device for this container's directories: start it with \
             late images on (PodBuilder::late_images) or a pod volume"
                .into(),
        )
    })?;
    lock(&pod.state).late.share(handle, prefix, dir, ro)
}

/// The container's root filesystem and its image's config.
fn root_filesystem(
    pod: &PodInner,
    spec: &ContainerSpec,
) -> Result<(Rootfs, oci_spec::image::ImageConfiguration)> {
    if let ImageRef::Rootfs(dir) = &spec.image {
        if !dir.is_dir() {
            return Err(Error::ImageNotFound {
                image: spec.image.describe(),
                source: Box::new(hypercontainer_image::StoreError::Source(
                    hypercontainer_image::SourceError::Missing(dir.display().to_string()),
                )),
            });
        }
        let share = late_share(pod, "r", dir, !spec.rootfs_writable)?;
        let path = share_path(&share);
        let root = if spec.rootfs_writable {
            Rootfs::Directory { path }
        } else {
            Rootfs::Overlay {
                lowers: vec![path],
                upper: Upper::Tmpfs,
            }
        };
        return Ok((root, Default::default()));
    }
    if let Some(img) = pod.preloaded(&spec.image) {
        let serials = img
            .layers
            .iter()
            .map(|l| pod.layer_serials.get(&l.diff_id).cloned())
            .collect::<Option<Vec<_>>>();
        if let Some(layers) = serials {
            let root = Rootfs::Layers {
                layers,
                upper: Upper::Tmpfs,
            };
            return Ok((root, img.config.clone()));
        }
    }
    let img = pod.images.resolve(&spec.image, true)?;
    let mut lowers = Vec::with_capacity(img.layers.len());
    for l in &img.layers {
        let tree = l
            .tree_path
            .as_ref()
            .ok_or_else(|| Error::NoLayerTree(l.diff_id.to_string()))?;
        let hex = l.diff_id.hex();
        let name = format!("l-{}", &hex[..hex.len().min(40)]);
        lowers.push(share_path(&late_share(pod, &name, tree, true)?));
    }
    if lowers.len() > hypercontainer_protocol::MAX_LOWERS {
        return Err(Error::Config(format!(
            "image {} has {} layers; an image imported after the pod booted may have at most {}: \
             preload it",
            spec.image.describe(),
            lowers.len(),
            hypercontainer_protocol::MAX_LOWERS
        )));
    }
    let root = Rootfs::Overlay {
        lowers,
        upper: Upper::Tmpfs,
    };
    Ok((root, img.config.clone()))
}

impl Container {
    /// Its id in the pod (never reused).
    pub fn id(&self) -> ContainerId {
        self.id
    }

    /// Its name in the pod.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn pod(&self) -> Result<Arc<PodInner>> {
        self.pod.upgrade().ok_or(Error::PodGone)
    }

    fn state_err(&self, state: &'static str) -> Error {
        Error::ContainerState {
            container: self.name.clone(),
            state,
        }
    }

    /// The main process's handle, once started.
    pub(crate) fn main(&self) -> Result<ProcessHandle> {
        match &*lock(&self.phase) {
            Phase::Started(h) => Ok(h.clone()),
            Phase::Created(_) => Err(self.state_err("is not started: call start")),
            Phase::Removed => Err(self.state_err("was removed")),
        }
    }

    /// Builds the container's root filesystem in the guest and starts its
    /// main process; returns once it runs, or why it could not start (its
    /// exit status is then 125, 126 or 127, as runc's).
    pub fn start(&self) -> Result<()> {
        let pod = self.pod()?;
        let handle = {
            let mut phase = lock(&self.phase);
            let pending = match std::mem::replace(&mut *phase, Phase::Removed) {
                Phase::Created(p) => p,
                other => {
                    let started = matches!(other, Phase::Started(_));
                    *phase = other;
                    return Err(self.state_err(if started {
                        "is already started"
                    } else {
                        "was removed"
                    }));
                }
            };
            let Pending {
                create,
                stdout,
                stderr,
            } = *pending;
            let h = pod
                .client
                .create(create, stdout, stderr)
                .map_err(|e| pod.died(e))?;
            lock(&self.procs).push(h.id());
            *phase = Phase::Started(h.clone());
            h
        };
        if !self.stdin_open {
            handle.close_stdin().map_err(|e| pod.died(e))?;
        }
        handle.wait_started(None).map_err(|e| pod.died(e))?;
        Ok(())
    }

    /// The main process's pid in the guest, once started.
    pub fn pid(&self) -> Option<u32> {
        self.main().ok().and_then(|h| h.pid())
    }

    /// The main process's stdout (when [`Output::Piped`]); once.
    pub fn stdout(&self) -> Result<OutputReader> {
        self.main()?.stdout().map_err(agent_err)
    }

    /// The main process's stderr (when [`Output::Piped`]); once.
    pub fn stderr(&self) -> Result<OutputReader> {
        self.main()?.stderr().map_err(agent_err)
    }

    /// A writer for the main process's stdin (see [`ContainerSpec::stdin`]).
    pub fn stdin(&self) -> Result<StdinWriter> {
        Ok(self.main()?.stdin())
    }

    /// Ends the main process's stdin.
    pub fn close_stdin(&self) -> Result<()> {
        self.main()?.close_stdin().map_err(agent_err)
    }

    /// Resizes the main process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.main()?.resize(rows, cols).map_err(agent_err)
    }

    fn died(&self, e: crate::agent_client::Error) -> Error {
        match self.pod.upgrade() {
            Some(p) => p.died(e),
            None => agent_err(e),
        }
    }

    /// Waits for the main process to end: its exit code, or 128 + the
    /// signal that killed it. The pod and its other containers run on.
    pub fn wait(&self) -> Result<i32> {
        self.main()?.wait().map_err(|e| self.died(e))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        self.main()?.wait_timeout(timeout).map_err(|e| self.died(e))
    }

    /// The exit status, if the main process ended.
    pub fn try_wait(&self) -> Option<i32> {
        self.main().ok().and_then(|h| h.try_status())
    }

    /// Whether the kernel's OOM killer ended the main process (exit 137).
    pub fn oom_killed(&self) -> bool {
        self.main().is_ok_and(|h| h.oom_killed())
    }

    /// Sends a signal (Linux number) to the main process.
    pub fn kill(&self, signal: i32) -> Result<()> {
        self.main()?.signal(signal).map_err(|e| self.died(e))
    }

    /// Stops the main process: the image's StopSignal (default SIGTERM),
    /// then SIGKILL after `grace`; returns its exit status.
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        let main = self.main()?;
        if let Some(s) = main.try_status() {
            return Ok(s);
        }
        self.kill(self.stop_signal)?;
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        self.kill(libc::SIGKILL)?;
        match self.wait_timeout(Duration::from_secs(10))? {
            Some(s) => Ok(s),
            None => {
                let pod = self.pod()?;
                pod.stop();
                let console = lock(&pod.vm).console_tail();
                Err(Error::GuestDied {
                    stage: "while stopping",
                    reason: "the agent did not report the process's end after SIGKILL; the VM \
                             was stopped"
                        .into(),
                    console,
                })
            }
        }
    }

    /// Runs another process in the running container (defaults from the
    /// main process: environment, working directory, user); returns once
    /// it started.
    pub fn exec(&self, cmd: Exec) -> Result<Process> {
        let pod = self.pod()?;
        self.main()?;
        let p = cmd.process(&self.template)?;
        let h = pod
            .client
            .exec_in(self.id, p, cmd.stdout, cmd.stderr)
            .map_err(|e| pod.died(e))?;
        lock(&self.procs).push(h.id());
        if !cmd.stdin {
            h.close_stdin().map_err(|e| pod.died(e))?;
        }
        h.wait_started(None).map_err(|e| pod.died(e))?;
        Ok(Process { handle: h })
    }

    /// The container's resource use (its cgroup's memory, CPU time and
    /// pids) and the guest's memory, from the agent.
    pub fn stats(&self) -> Result<ContainerStats> {
        let pod = self.pod()?;
        pod.client
            .stats(self.id, STATS_TIMEOUT)
            .map_err(|e| pod.died(e))
    }

    /// Removes the container: what still runs in it is killed (as `docker
    /// rm -f`), its mounts and cgroup go, and the host forgets its
    /// processes. Its name can then be used again.
    pub fn remove(&self) -> Result<()> {
        let pod = self.pod()?;
        let was = std::mem::replace(&mut *lock(&self.phase), Phase::Removed);
        let result = match was {
            Phase::Removed => return Err(self.state_err("was removed")),
            Phase::Created(_) => Ok(()),
            Phase::Started(_) => pod
                .client
                .remove(self.id)
                .and_then(|()| pod.client.wait_removed(self.id, REMOVE_TIMEOUT))
                .map_err(|e| pod.died(e)),
        };
        let procs = std::mem::take(&mut *lock(&self.procs));
        pod.client.forget(&procs);
        lock(&pod.state).names.remove(&self.name);
        result
    }

    /// When the host learned that the main process started, and when its
    /// first output arrived.
    pub(crate) fn main_times(&self) -> (Option<std::time::Instant>, Option<std::time::Instant>) {
        match self.main() {
            Ok(h) => (h.started_at(), h.first_output_at()),
            Err(_) => (None, None),
        }
    }
}
