//! The VMM core: a KVM virtual machine that boots a Linux kernel to its init.
//!
//! [`VmBuilder`] validates a configuration and builds a running [`Vm`]:
//! guest memory, an in-kernel irqchip and PIT, vCPUs with CPUID, MSRs, FPU
//! and LAPIC state set as Linux expects, an MP table describing the vCPUs
//! (the guest kernel has no ACPI), the kernel loaded through its PVH note
//! (`vmlinux`) or the Linux boot protocol (`bzImage`), a 16550 serial
//! console at 0x3f8/IRQ 4 whose output goes to a [`ConsoleSink`], and an
//! i8042 controller whose reset command (the guest is booted with
//! `reboot=k`) ends the VM.
//!
//! Each vCPU runs on its own thread; PIO and MMIO exits are dispatched to
//! [`bus::Bus`]es. The VM ends when the guest resets or powers off, a vCPU
//! fails, or the host stops it; [`Vm::wait`] returns the [`ExitReason`] or
//! an [`Error`] (a guest kernel panic is an error carrying the last console
//! lines). Nothing here ever exits the process: a guest fault or a panic in
//! a vCPU thread ends that VM only.
//!
//! ```no_run
//! use hypercontainer::vmm::{ExitReason, VmBuilder};
//!
//! let mut vm = VmBuilder::new()
//!     .kernel("/path/to/vmlinux")
//!     .initramfs("/path/to/initramfs.cpio")
//!     .memory_mib(256)
//!     .vcpus(2)
//!     .console_writer(std::io::stdout())
//!     .build()?;
//! match vm.wait()? {
//!     ExitReason::Reset => println!("guest rebooted (its way of powering off)"),
//!     other => println!("guest ended: {other:?}"),
//! }
//! # Ok::<(), hypercontainer::vmm::Error>(())
//! ```
//!
//! # Signals
//!
//! The host kicks vCPU threads out of `KVM_RUN` with a signal, `SIGRTMIN()`
//! unless [`VmBuilder::kick_signal`] picks another. Its handler is installed
//! lazily the first time a VM is built, once per signal number.

pub mod boot;
pub mod bus;
pub mod console;
pub mod cpu;
pub mod devices;
mod kick;
pub mod layout;
pub mod mptable;
pub mod vcpu;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

pub use bus::{Bus, BusDevice, SharedDevice};
pub use console::{ConsoleSink, NullSink, WriterSink};
pub use cpu::EntryMode;
pub use devices::{BlockConfig, NetConfig};

/// The command line used unless [`VmBuilder::cmdline`] replaces it: serial
/// console, reset through the i8042 (how the guest powers off), reboot
/// immediately on panic (so a panic ends the VM).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest guest memory accepted at all; a kernel needs more (see
/// [`Error::MemoryTooSmall`]).
pub const MIN_MEMORY_MIB: u64 = 1;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Console lines kept for error reports by default.
pub const DEFAULT_CONSOLE_TAIL: usize = 64;
/// Offset of the QueueNotify register in a virtio-mmio window.
pub const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// Errors of the VMM core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm does not exist: this host offers no KVM (load kvm-intel or kvm-amd, or enable nested virtualization)")]
    KvmMissing,
    /// `/dev/kvm` exists but cannot be opened.
    #[error(
        "permission denied opening /dev/kvm: add this user to the kvm group or grant it rw access"
    )]
    KvmPermission(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host's `/dev/kvm` is PVM, which cannot run a stock Linux guest.
    #[error(
        "this host's /dev/kvm is PVM (Pagetable-based Virtual Machine), which cannot boot a \
         stock Linux guest kernel; run on hardware-assisted KVM (Intel VT-x or AMD-V, bare \
         metal or nested)"
    )]
    PvmHost {
        /// What KVM reported.
        #[source]
        source: Box<Error>,
        /// The last console lines.
        console: Vec<String>,
    },
    /// No kernel image was configured.
    #[error("no kernel image configured")]
    NoKernel,
    /// The kernel image cannot be opened.
    #[error("cannot open kernel image {path}")]
    KernelMissing {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the kernel image failed.
    #[error("cannot read kernel image {path}")]
    KernelRead {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a kernel this VMM can boot.
    #[error("{path} is not a bootable x86-64 Linux kernel: {reason}")]
    NotAKernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// linux-loader rejected the kernel image.
    #[error("cannot load kernel image {path}")]
    KernelLoad {
        /// The path given.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs cannot be read.
    #[error("cannot read initramfs {path}")]
    InitramfsMissing {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory is too small (for the kernel and initramfs).
    #[error("guest memory of {requested_mib} MiB is too small: need at least {minimum_mib} MiB")]
    MemoryTooSmall {
        /// What was asked for.
        requested_mib: u64,
        /// What is needed.
        minimum_mib: u64,
    },
    /// Guest memory is larger than supported.
    #[error("guest memory of {requested_mib} MiB is larger than the supported {maximum_mib} MiB")]
    MemoryTooLarge {
        /// What was asked for.
        requested_mib: u64,
        /// The limit.
        maximum_mib: u64,
    },
    /// Hugepage-backed memory must be a multiple of 2 MiB.
    #[error("hugepage-backed guest memory must be a multiple of 2 MiB, not {0} MiB")]
    HugepageSize(u64),
    /// Allocating guest memory failed.
    #[error("cannot allocate guest memory")]
    MemoryAlloc(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A guest memory access failed while setting up the boot.
    #[error("guest memory access failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// Zero vCPUs were requested.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than KVM or the boot tables allow.
    #[error("{requested} vCPUs requested, at most {max} supported here")]
    TooManyVcpus {
        /// What was asked for.
        requested: u32,
        /// The limit.
        max: u32,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot parameters failed.
    #[error("cannot write boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// More virtio-mmio devices than IRQ lines.
    #[error("too many virtio-mmio devices (at most {0})")]
    TooManyDevices(u32),
    /// A device range could not be registered.
    #[error("cannot register device")]
    Bus(#[source] bus::BusError),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The kick signal could not be set up.
    #[error("cannot set up the vCPU kick signal")]
    Signal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Spawning a vCPU thread failed.
    #[error("cannot spawn vCPU thread")]
    Thread(#[source] std::io::Error),
    /// The guest kernel panicked.
    #[error("the guest kernel panicked; last console lines:\n{}", console.join("\n"))]
    GuestPanic {
        /// The last console lines (the panic message among them).
        console: Vec<String>,
    },
    /// KVM could not run the guest (`KVM_EXIT_INTERNAL_ERROR`).
    #[error("KVM internal error on vCPU {vcpu} (suberror {suberror})")]
    InternalError {
        /// The vCPU.
        vcpu: u32,
        /// KVM's suberror code (1: emulation failure).
        suberror: u32,
    },
    /// A KVM internal error, with the console tail for context.
    #[error("the guest failed on vCPU {vcpu} (KVM internal error, suberror {suberror}); last console lines:\n{}", console.join("\n"))]
    GuestFault {
        /// The vCPU.
        vcpu: u32,
        /// KVM's suberror code (1: emulation failure).
        suberror: u32,
        /// The last console lines.
        console: Vec<String>,
    },
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    #[error("vCPU entry failed on host CPU {cpu} (hardware reason {reason:#x})")]
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// A KVM exit this VMM does not handle.
    #[error("unexpected exit on vCPU {vcpu}: {exit}")]
    UnexpectedExit {
        /// The vCPU.
        vcpu: u32,
        /// The exit.
        exit: String,
    },
    /// A vCPU thread panicked (a bug in the VMM or a device).
    #[error("vCPU {vcpu} thread panicked: {message}")]
    VcpuPanic {
        /// The vCPU.
        vcpu: u32,
        /// The panic message.
        message: String,
    },
    /// A vCPU thread did not leave `KVM_RUN` or its exit handler within
    /// the grace period after the VM ended. Its thread was left running,
    /// detached, with the guest memory it can reach kept mapped; everything
    /// else of the VM was released.
    #[error("vCPU {vcpu} did not stop within {grace:?} ({activity}); its thread was left behind")]
    VcpuUnresponsive {
        /// The vCPU.
        vcpu: u32,
        /// What its thread was doing.
        activity: vcpu::Activity,
        /// How long it was given.
        grace: Duration,
    },
    /// The outcome was already returned by an earlier `wait`.
    #[error("the VM's outcome was already collected")]
    AlreadyCollected,
    /// A virtio device could not be set up, or the device event loop
    /// failed (a device handler panicked, for one) and ended the VM.
    #[error("virtio devices")]
    Devices(#[source] devices::Error),
}

/// Result alias of the VMM core.
pub type Result<T> = std::result::Result<T, Error>;

/// A `KVM_EXIT_SYSTEM_EVENT` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest powered off.
    Shutdown,
    /// The guest reset.
    Reset,
    /// The guest crashed.
    Crash,
    /// Another event type.
    Other(u32),
}

impl SystemEvent {
    fn from_kvm(kind: u32) -> Self {
        match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Self::Shutdown,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Self::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Self::Crash,
            other => Self::Other(other),
        }
    }
}

/// Why a VM ended (without an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked the i8042 to reset the CPU: with `reboot=k` this is
    /// how a Linux guest reboots or powers off.
    Reset,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// KVM reported a system event.
    SystemEvent(SystemEvent),
    /// The host stopped the VM.
    Stopped,
    /// Every vCPU executed `hlt` with nothing to wake it (only without an
    /// in-kernel irqchip, i.e. raw-code VMs).
    Halted,
}

/// Timestamps of a VM's start.
#[derive(Debug, Clone, Copy)]
pub struct BootTimes {
    /// When `build()` was called.
    pub build_started: Instant,
    /// When `build()` returned.
    pub build_finished: Instant,
    /// When the boot vCPU first entered `KVM_RUN`, if it did yet.
    pub first_run: Option<Instant>,
}

/// The resources of a virtio-mmio slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base of the 4 KiB window.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// IRQ line (IOAPIC pin / GSI).
    pub irq: u32,
}

/// A virtio-mmio transport to wire into the VM.
pub struct VirtioMmioDevice {
    /// The transport, handling accesses to its 4 KiB window.
    pub device: SharedDevice,
    /// The device writes this eventfd to raise its interrupt; it is
    /// registered as an irqfd on the slot's IRQ line.
    pub interrupt: EventFd,
    /// `(queue index, eventfd)`: a guest write of the queue index to
    /// QueueNotify signals the eventfd in the kernel (ioeventfd) without
    /// exiting to the VMM.
    pub queue_notify: Vec<(u32, EventFd)>,
}

/// How raw code starts.
#[cfg(feature = "test-utils")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// 16-bit real mode, CS base 0; entries must be below 64 KiB.
    Real,
    /// 32-bit flat protected mode, paging off (reaches the MMIO hole).
    Protected32,
}

/// Raw code to run instead of a kernel (for testing the KVM plumbing).
#[cfg(feature = "test-utils")]
#[derive(Debug, Clone)]
pub struct RawCode {
    /// Code and data, copied to `load_addr`.
    pub code: Vec<u8>,
    /// Guest physical address to copy `code` to.
    pub load_addr: u64,
    /// Entry point per vCPU; the last entry applies to any further vCPUs.
    /// `rax` holds the vCPU index.
    pub entries: Vec<u64>,
    /// Real or protected mode.
    pub mode: RawMode,
    /// Create the in-kernel irqchip (needed for irqfds, so for virtio-mmio
    /// devices); `hlt` then no longer exits to the VMM.
    pub irqchip: bool,
}

#[cfg(feature = "test-utils")]
impl RawCode {
    /// Real-mode code at `load_addr`, every vCPU entering at its start, no
    /// irqchip.
    pub fn real(code: &[u8], load_addr: u16) -> Self {
        Self {
            code: code.to_vec(),
            load_addr: u64::from(load_addr),
            entries: vec![u64::from(load_addr)],
            mode: RawMode::Real,
            irqchip: false,
        }
    }
}

enum Initramfs {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// Builds a [`Vm`]: set what you need, then [`build`](VmBuilder::build).
pub struct VmBuilder {
    memory_mib: u64,
    vcpus: u32,
    hugepages: bool,
    thp: bool,
    share_kernel_pages: bool,
    kernel: Option<PathBuf>,
    initramfs: Option<Initramfs>,
    cmdline: String,
    kick_signal: Option<libc::c_int>,
    console: Box<dyn ConsoleSink>,
    console_tail: usize,
    pio_devices: Vec<(u64, u64, SharedDevice)>,
    mmio_devices: Vec<(u64, u64, SharedDevice)>,
    devices: devices::DeviceList,
    #[cfg(feature = "test-utils")]
    raw: Option<RawCode>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("kernel", &self.kernel)
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

impl VmBuilder {
    /// A builder with 128 MiB, one vCPU, [`DEFAULT_CMDLINE`], and the
    /// console going nowhere (its tail is still kept).
    pub fn new() -> Self {
        Self {
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            hugepages: false,
            thp: true,
            share_kernel_pages: true,
            kernel: None,
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            kick_signal: None,
            console: Box::new(NullSink),
            console_tail: DEFAULT_CONSOLE_TAIL,
            pio_devices: Vec::new(),
            mmio_devices: Vec::new(),
            devices: devices::DeviceList::default(),
            #[cfg(feature = "test-utils")]
            raw: None,
        }
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (1 up to what KVM supports).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Back guest memory with 2 MiB hugepages (they must be reserved in
    /// `/proc/sys/vm/nr_hugepages`).
    pub fn hugepages(mut self, on: bool) -> Self {
        self.hugepages = on;
        self
    }

    /// Advise transparent hugepages for guest memory (default on; ignored
    /// with [`hugepages`](Self::hugepages)). Fewer page faults and TLB
    /// misses, at the price of zeroing 2 MiB at a time.
    pub fn transparent_hugepages(mut self, on: bool) -> Self {
        self.thp = on;
        self
    }

    /// Map a `vmlinux` kernel and an initramfs file into guest memory
    /// copy-on-write instead of copying them (default on; ignored with
    /// [`hugepages`](Self::hugepages)).
    ///
    /// On, `build()` copies nothing (a sandbox VM reaches its first
    /// `KVM_RUN` in about 3 ms instead of 15), and every VM booting the
    /// same files shares their unmodified pages through the page cache
    /// (most of the kernel's ~10 MiB), which raises density. Replace the
    /// files by renaming new ones over them, never by rewriting them in
    /// place, while VMs run from them; turn it off where that cannot be
    /// guaranteed.
    pub fn share_kernel_pages(mut self, on: bool) -> Self {
        self.share_kernel_pages = on;
        self
    }

    /// The kernel image: an ELF `vmlinux` (booted through its PVH note) or
    /// a `bzImage`.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// An initramfs (cpio archive, optionally compressed) read from a file.
    pub fn initramfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.initramfs = Some(Initramfs::Path(path.into()));
        self
    }

    /// An initramfs given as bytes.
    pub fn initramfs_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.initramfs = Some(Initramfs::Bytes(bytes));
        self
    }

    /// Replaces the whole kernel command line (default: [`DEFAULT_CMDLINE`]).
    /// Keep `reboot=k` (how the guest ends the VM) and `panic=-1`.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Appends to the kernel command line.
    pub fn append_cmdline(mut self, extra: &str) -> Self {
        if !self.cmdline.is_empty() {
            self.cmdline.push(' ');
        }
        self.cmdline.push_str(extra);
        self
    }

    /// The signal used to kick vCPU threads (default `SIGRTMIN()`). Its
    /// handler replaces any the process had.
    pub fn kick_signal(mut self, signal: libc::c_int) -> Self {
        self.kick_signal = Some(signal);
        self
    }

    /// Sends console output to `sink`.
    pub fn console(mut self, sink: impl ConsoleSink + 'static) -> Self {
        self.console = Box::new(sink);
        self
    }

    /// Sends console output to a writer (stdout, a file, a buffer).
    pub fn console_writer(self, w: impl std::io::Write + Send + 'static) -> Self {
        self.console(WriterSink(w))
    }

    /// Sends console output, chunk by chunk, to a channel.
    pub fn console_channel(self, tx: std::sync::mpsc::Sender<Vec<u8>>) -> Self {
        self.console(tx)
    }

    /// How many console lines to keep for error reports (default 64).
    pub fn console_tail_lines(mut self, n: usize) -> Self {
        self.console_tail = n;
        self
    }

    /// Registers a device on the port I/O bus at `[base, base + len)`.
    pub fn pio_device(mut self, base: u16, len: u16, device: SharedDevice) -> Self {
        self.pio_devices
            .push((u64::from(base), u64::from(len), device));
        self
    }

    /// Registers a device on the MMIO bus at `[base, base + len)`.
    pub fn mmio_device(mut self, base: u64, len: u64, device: SharedDevice) -> Self {
        self.mmio_devices.push((base, len, device));
        self
    }

    /// The slot the next [`virtio_mmio_device`](Self::virtio_mmio_device)
    /// will get (slots are handed out in order).
    pub fn next_virtio_slot(&self) -> MmioSlot {
        slot(self.devices.len() as u32)
    }

    /// Adds a virtio-mmio transport in the next slot: its window goes on the
    /// MMIO bus, its interrupt eventfd becomes an irqfd, its queue-notify
    /// eventfds become ioeventfds, and the kernel command line declares it
    /// (`virtio_mmio.device=4K@<base>:<irq>`).
    pub fn virtio_mmio_device(mut self, device: VirtioMmioDevice) -> Self {
        self.devices.push(devices::DeviceSpec::Custom(device));
        self
    }

    /// Adds a virtio block device in the next slot (see [`devices`] for
    /// slot order and the event loop).
    pub fn block(mut self, config: devices::BlockConfig) -> Self {
        self.devices.push(devices::DeviceSpec::Block(config));
        self
    }

    /// Adds the vsock device with the guest's CID (above 2); its host side
    /// is [`Vm::vsock`]. At most one per VM.
    pub fn vsock(mut self, guest_cid: u64) -> Self {
        self.devices.push(devices::DeviceSpec::Vsock(guest_cid));
        self
    }

    /// Adds a virtio-rng device (entropy from the host's `getrandom`).
    pub fn rng(mut self) -> Self {
        self.devices.push(devices::DeviceSpec::Rng);
        self
    }

    /// Adds a single-port virtio console whose guest output goes to
    /// `output` (the guest's `/dev/hvc0`); its input is
    /// [`Vm::virtio_console_input`].
    pub fn virtio_console(mut self, output: impl std::io::Write + Send + 'static) -> Self {
        self.devices
            .push(devices::DeviceSpec::Console(Box::new(output)));
        self
    }

    /// Adds a virtio-fs device serving one host directory, which the guest
    /// mounts by its tag (`mount -t virtiofs TAG /path`). Each share takes
    /// one slot and one IRQ line; tags must be unique within a VM.
    pub fn fs(mut self, share: hypercontainer_virtio::fs::ShareConfig) -> Self {
        self.devices.push(devices::DeviceSpec::Fs(share));
        self
    }

    /// Adds one virtio-fs device serving several shares (see
    /// [`hypercontainer_virtio::fs::multi`]): the guest mounts `config.tag`
    /// once and finds each share as a directory under it, so any number of
    /// host directories (up to 255) cost one MMIO slot and one interrupt.
    /// Its tag must differ from every other virtio-fs tag of the VM.
    pub fn fs_multi(mut self, config: hypercontainer_virtio::fs::MultiShareConfig) -> Self {
        self.devices.push(devices::DeviceSpec::MultiFs(config));
        self
    }

    /// Adds a virtio network device.
    pub fn net(mut self, config: devices::NetConfig) -> Self {
        self.devices.push(devices::DeviceSpec::Net(config));
        self
    }

    /// Runs raw code instead of a kernel: no boot tables, every vCPU starts
    /// at its entry; without an irqchip `hlt` exits to the VMM.
    #[cfg(feature = "test-utils")]
    pub fn raw_code(mut self, code: RawCode) -> Self {
        self.raw = Some(code);
        self
    }

    fn take_raw(&mut self) -> Result<Option<RawBoot>> {
        #[cfg(feature = "test-utils")]
        if let Some(raw) = self.raw.take() {
            let entries = raw
                .entries
                .iter()
                .map(|&entry| match raw.mode {
                    RawMode::Real => u16::try_from(entry)
                        .map(|entry| EntryMode::RealMode { entry })
                        .map_err(|_| Error::NoKernel),
                    RawMode::Protected32 => Ok(EntryMode::Flat32 { entry }),
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Some(RawBoot {
                code: raw.code,
                load_addr: raw.load_addr,
                entries,
                irqchip: raw.irqchip,
            }));
        }
        Ok(None)
    }

    /// Validates the configuration, creates the VM and starts its vCPUs.
    pub fn build(mut self) -> Result<Vm> {
        let build_started = Instant::now();
        // Validation that needs no KVM.
        if self.vcpus == 0 {
            return Err(Error::NoVcpus);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall {
                requested_mib: self.memory_mib,
                minimum_mib: MIN_MEMORY_MIB,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(Error::MemoryTooLarge {
                requested_mib: self.memory_mib,
                maximum_mib: MAX_MEMORY_MIB,
            });
        }
        if self.hugepages && self.memory_mib % 2 != 0 {
            return Err(Error::HugepageSize(self.memory_mib));
        }
        let max_virtio = layout::LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ + 1;
        if self.devices.len() as u32 > max_virtio {
            return Err(Error::TooManyDevices(max_virtio));
        }
        self.devices.validate().map_err(Error::Devices)?;
        let raw = self.take_raw()?;
        let boots_linux = raw.is_none();
        let irqchip = raw.as_ref().is_none_or(|r| r.irqchip);
        let kernel = if boots_linux {
            Some(self.kernel.clone().ok_or(Error::NoKernel)?)
        } else {
            None
        };
        let cmdline = self.full_cmdline()?;
        let initramfs = match &self.initramfs {
            None => None,
            Some(Initramfs::Bytes(b)) => Some(boot::InitramfsSource::Bytes(b.as_slice())),
            Some(Initramfs::Path(p)) => {
                let missing = |e| Error::InitramfsMissing {
                    path: p.clone(),
                    source: e,
                };
                let file = std::fs::File::open(p).map_err(missing)?;
                let len = file.metadata().map_err(missing)?.len();
                Some(boot::InitramfsSource::File {
                    file,
                    path: p.as_path(),
                    len,
                })
            }
        };

        // KVM.
        let kvm = open_kvm()?;
        let max_vcpus = kvm.get_max_vcpus().min(mptable::MAX_CPUS as usize) as u32;
        if self.vcpus > max_vcpus {
            return Err(Error::TooManyVcpus {
                requested: self.vcpus,
                max: max_vcpus,
            });
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem_size = self.memory_mib << 20;
        let memory = alloc_memory(mem_size, self.hugepages, self.thp)?;
        register_memory(&vm_fd, &memory)?;

        if irqchip {
            vm_fd
                .set_tss_address(layout::KVM_TSS_ADDR as usize)
                .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
            vm_fd
                .set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
                .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
            vm_fd
                .create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }

        // Devices.
        let console_state = Arc::new(console::ConsoleState::new(self.console_tail));
        let signal = self.kick_signal.unwrap_or_else(kick::default_signal);
        kick::ensure_handler(signal).map_err(|e| Error::Signal(Box::new(e)))?;
        let control = Arc::new(vcpu::Control::new(
            self.vcpus as usize,
            signal,
            console_state.clone(),
            boots_linux,
        ));
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        if irqchip {
            vm_fd
                .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
                .map_err(kvm_err("KVM_IRQFD"))?;
        }
        let serial = console::SerialDevice::new(
            serial_irq.try_clone().map_err(Error::EventFd)?,
            self.console,
            console_state.clone(),
        );
        pio.insert(layout::SERIAL_PORT, 8, Arc::new(Mutex::new(serial)))
            .map_err(Error::Bus)?;
        let weak = Arc::downgrade(&control);
        let i8042 = console::I8042(vm_superio::I8042Device::new(console::ResetTrigger(
            Box::new(move || {
                if let Some(c) = weak.upgrade() {
                    c.finish(Ok(ExitReason::Reset));
                }
            }),
        )));
        pio.insert(layout::I8042_PORT, 5, Arc::new(Mutex::new(i8042)))
            .map_err(Error::Bus)?;
        for (base, len, dev) in self.pio_devices {
            pio.insert(base, len, dev).map_err(Error::Bus)?;
        }
        for (base, len, dev) in self.mmio_devices {
            mmio.insert(base, len, dev).map_err(Error::Bus)?;
        }
        let weak = Arc::downgrade(&control);
        let (virtio, devices) = std::mem::take(&mut self.devices)
            .realize(
                &memory,
                slot,
                Box::new(move |e| {
                    if let Some(c) = weak.upgrade() {
                        c.finish(Err(Error::Devices(e)));
                    }
                }),
            )
            .map_err(Error::Devices)?;
        let mut virtio_fds = Vec::new();
        for (i, dev) in virtio.into_iter().enumerate() {
            let s = slot(i as u32);
            mmio.insert(s.base, s.size, dev.device)
                .map_err(Error::Bus)?;
            vm_fd
                .register_irqfd(&dev.interrupt, s.irq)
                .map_err(kvm_err("KVM_IRQFD"))?;
            for (queue, fd) in &dev.queue_notify {
                vm_fd
                    .register_ioevent(
                        fd,
                        &IoEventAddress::Mmio(s.base + VIRTIO_MMIO_QUEUE_NOTIFY),
                        *queue,
                    )
                    .map_err(kvm_err("KVM_IOEVENTFD"))?;
            }
            virtio_fds.push(dev.interrupt);
            virtio_fds.extend(dev.queue_notify.into_iter().map(|(_, fd)| fd));
        }
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);

        // vCPUs.
        let mut supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let mut vcpus = Vec::with_capacity(self.vcpus as usize);
        for index in 0..self.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpu::filter_cpuid(
                &mut cpuid,
                cpu::CpuidConfig {
                    index,
                    count: self.vcpus,
                    tsc_deadline,
                },
            );
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            if index == 0 {
                supported = cpuid;
            }
            vcpus.push(fd);
        }

        // Guest memory contents and boot vCPU state.
        let entry = if let Some(kernel) = &kernel {
            let mode = boot::load(
                &memory,
                boot::BootConfig {
                    kernel,
                    initramfs,
                    cmdline: &cmdline,
                    mem_size,
                    vcpus: self.vcpus,
                    cpu_signature: cpu::signature(&supported),
                    map_kernel: self.share_kernel_pages && !self.hugepages,
                },
            )?;
            vec![mode]
        } else if let Some(raw) = &raw {
            write_raw(raw, &memory)?
        } else {
            return Err(Error::NoKernel);
        };
        for (index, fd) in vcpus.iter().enumerate() {
            if boots_linux {
                let msrs = cpu::boot_msrs_fam().ok_or(Error::Kvm {
                    op: "building the MSR list",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
                let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
                if n != msrs.as_slice().len() {
                    return Err(Error::Kvm {
                        op: "KVM_SET_MSRS (not every boot MSR was accepted)",
                        source: kvm_ioctls::Error::new(libc::EINVAL),
                    });
                }
                fd.set_fpu(&cpu::fpu()).map_err(kvm_err("KVM_SET_FPU"))?;
                let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
                cpu::set_lint(&mut lapic);
                fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
            }
            // Application processors of a Linux guest wait for INIT/SIPI.
            let mode = match entry.get(index).or(entry.last()) {
                Some(m) if index == 0 || !boots_linux => *m,
                _ => continue,
            };
            let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            fd.set_sregs(&cpu::sregs(mode, sregs))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            fd.set_regs(&cpu::regs(mode, index as u32))
                .map_err(kvm_err("KVM_SET_REGS"))?;
            if irqchip && index > 0 {
                // Raw code on an irqchip VM: start the APs directly instead of
                // leaving them waiting for INIT/SIPI.
                let runnable = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
                };
                fd.set_mp_state(runnable)
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
            }
        }

        let mut threads = Vec::with_capacity(vcpus.len());
        for (index, fd) in vcpus.into_iter().enumerate() {
            let v = vcpu::Vcpu::new(index as u32, fd, pio.clone(), mmio.clone(), memory.clone());
            let c = control.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu::thread_main(v, c));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    control.finish(Ok(ExitReason::Stopped));
                    for h in threads {
                        let _ = h.join();
                    }
                    return Err(Error::Thread(e));
                }
            }
        }

        Ok(Vm {
            control,
            threads,
            console: console_state,
            pio,
            mmio,
            _virtio_fds: virtio_fds,
            devices,
            _serial_irq: serial_irq,
            vm_fd,
            memory,
            build_started,
            build_finished: Instant::now(),
        })
    }

    /// The command line the kernel will get: the configured one plus the
    /// declarations of the virtio-mmio devices.
    pub fn kernel_cmdline(&self) -> Result<String> {
        let c = self.full_cmdline()?;
        c.as_cstring()
            .map_err(Error::Cmdline)
            .map(|c| c.to_string_lossy().into_owned())
    }

    fn full_cmdline(&self) -> Result<Cmdline> {
        let mut c = Cmdline::new(layout::CMDLINE_MAX).map_err(Error::Cmdline)?;
        if !self.cmdline.trim().is_empty() {
            c.insert_str(self.cmdline.trim()).map_err(Error::Cmdline)?;
        }
        for i in 0..self.devices.len() {
            let s = slot(i as u32);
            c.add_virtio_mmio_device(s.size, GuestAddress(s.base), s.irq, None)
                .map_err(Error::Cmdline)?;
        }
        Ok(c)
    }
}

/// Raw code in the form the builder uses, present with or without the
/// `test-utils` feature.
struct RawBoot {
    code: Vec<u8>,
    load_addr: u64,
    entries: Vec<EntryMode>,
    irqchip: bool,
}

fn write_raw(raw: &RawBoot, memory: &GuestMemoryMmap) -> Result<Vec<EntryMode>> {
    use vm_memory::Bytes;
    memory
        .write_slice(&raw.code, GuestAddress(raw.load_addr))
        .map_err(Error::GuestMemory)?;
    for (i, entry) in cpu::boot_gdt(cpu::CODE32).iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(layout::GDT_ADDR + 8 * i as u64))
            .map_err(Error::GuestMemory)?;
    }
    if raw.entries.is_empty() {
        return Err(Error::NoKernel);
    }
    Ok(raw.entries.clone())
}

fn slot(i: u32) -> MmioSlot {
    MmioSlot {
        base: layout::VIRTIO_MMIO_BASE + u64::from(i) * layout::VIRTIO_MMIO_SIZE,
        size: layout::VIRTIO_MMIO_SIZE,
        irq: layout::VIRTIO_MMIO_FIRST_IRQ + i,
    }
}

fn kvm_err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => Error::KvmMissing,
        libc::EACCES | libc::EPERM => Error::KvmPermission(e),
        _ => Error::Kvm {
            op: "open /dev/kvm",
            source: e,
        },
    })
}

fn alloc_memory(mem_size: u64, hugepages: bool, thp: bool) -> Result<GuestMemoryMmap> {
    let mut regions = Vec::new();
    for (start, size) in layout::ram_regions(mem_size) {
        // Hugepages are reserved at mmap time (no MAP_NORESERVE), so a host
        // without enough of them fails here instead of raising SIGBUS when
        // the guest touches its memory.
        let flags = if hugepages {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        };
        let region = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepages)
            .build()
            .map_err(|e| Error::MemoryAlloc(Box::new(e)))?;
        if thp && !hugepages {
            // Transparent hugepages: far fewer page faults while loading the
            // kernel and fewer TLB misses in the guest. Advisory only.
            // SAFETY: the range is exactly the mapping just created, owned by
            // `region`; madvise does not change its contents.
            let _ = unsafe {
                libc::madvise(region.as_ptr().cast(), region.size(), libc::MADV_HUGEPAGE)
            };
        }
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| Error::MemoryAlloc("guest region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::MemoryAlloc(Box::new(e)))
}

fn register_memory(vm_fd: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(Error::GuestMemory)?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live anonymous mapping of exactly
        // `memory_size` bytes owned by `memory`, which the `Vm` keeps alive
        // until after the VM fd is closed.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// How long vCPU threads get to leave their loop once the VM ended.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running virtual machine. Dropping it stops the guest, joins the vCPU
/// threads, closes every fd and unmaps guest memory. A vCPU thread that
/// does not stop within [`STOP_GRACE`] (a host kernel bug, or a device
/// handler that blocks forever) is left running detached rather than
/// blocking the caller; it keeps the guest memory mapped.
pub struct Vm {
    control: Arc<vcpu::Control>,
    threads: Vec<JoinHandle<()>>,
    console: Arc<console::ConsoleState>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    _virtio_fds: Vec<EventFd>,
    devices: devices::Devices,
    _serial_irq: EventFd,
    // Field order matters for Drop: the VM fd closes before memory unmaps.
    vm_fd: VmFd,
    memory: GuestMemoryMmap,
    build_started: Instant,
    build_finished: Instant,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.threads.len())
            .field("done", &self.control.is_done())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Waits for the VM to end and returns why. The outcome is returned
    /// once; later calls give [`Error::AlreadyCollected`].
    pub fn wait(&mut self) -> Result<ExitReason> {
        self.control.wait_done(None);
        self.reap()
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` (`None`: the VM
    /// still runs).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<ExitReason>> {
        if self.control.wait_done(Some(timeout)) {
            Some(self.reap())
        } else {
            None
        }
    }

    fn reap(&mut self) -> Result<ExitReason> {
        let stopped = self.stop_threads();
        let outcome = self
            .control
            .take_outcome()
            .unwrap_or(Err(Error::AlreadyCollected));
        match stopped {
            Ok(()) => outcome,
            Err(e) => {
                log::error!("the VM ended with {outcome:?}, but: {e}");
                Err(e)
            }
        }
    }

    /// Ends the VM (if it still runs), joins the vCPU threads that leave
    /// within [`STOP_GRACE`] and detaches the others, then stops the
    /// device event loop.
    fn stop_threads(&mut self) -> Result<()> {
        self.control.finish(Ok(ExitReason::Stopped));
        // No threads left: joined (or given up on) before; don't wait again.
        let stuck = if self.threads.is_empty() {
            Vec::new()
        } else {
            self.control.wait_vcpus_gone(STOP_GRACE)
        };
        for (i, h) in self.threads.drain(..).enumerate() {
            if stuck.iter().all(|(v, _)| *v as usize != i) {
                // Panics were caught inside the thread; a join error cannot
                // carry anything more.
                let _ = h.join();
            }
        }
        self.devices.stop();
        match stuck.first() {
            None => Ok(()),
            Some(&(vcpu, activity)) => Err(Error::VcpuUnresponsive {
                vcpu,
                activity,
                grace: STOP_GRACE,
            }),
        }
    }

    /// Asks the VM to stop (it ends with [`ExitReason::Stopped`] unless it
    /// already ended). Returns at once; use [`wait`](Self::wait).
    pub fn stop(&self) {
        self.control.finish(Ok(ExitReason::Stopped));
    }

    /// A handle that can stop, pause and resume this VM from another thread
    /// (for example while one thread is blocked in [`wait`](Self::wait)).
    pub fn handle(&self) -> VmHandle {
        VmHandle(self.control.clone())
    }

    /// Pauses every vCPU; returns once they are all out of the guest.
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Whether the VM ended.
    pub fn is_finished(&self) -> bool {
        self.control.is_done()
    }

    /// The last console lines.
    pub fn console_tail(&self) -> Vec<String> {
        self.console.lines()
    }

    /// Start timestamps: `build()` call and return, first `KVM_RUN`.
    pub fn boot_times(&self) -> BootTimes {
        BootTimes {
            build_started: self.build_started,
            build_finished: self.build_finished,
            first_run: self.control.first_run(),
        }
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The port I/O bus.
    pub fn pio_bus(&self) -> &Bus {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio
    }

    /// The virtio devices the builder configured, with their slots.
    pub fn devices(&self) -> &devices::Devices {
        &self.devices
    }

    /// The host side of the vsock device (connect to guest ports, accept
    /// guest connections), if the VM has one.
    pub fn vsock(&self) -> Option<&devices::VsockHost> {
        self.devices.vsock()
    }

    /// Adds shares to the VM's multi-share virtio-fs device mounted as
    /// `tag` while it runs ([`VmBuilder::fs_multi`]), if it has one.
    pub fn fs_shares(&self, tag: &str) -> Option<hypercontainer_virtio::fs::SharesHandle> {
        self.devices.fs_shares(tag).cloned()
    }

    /// The input of the virtio console, if the VM has one.
    pub fn virtio_console_input(&self) -> Option<&devices::ConsoleInput> {
        self.devices.console_input()
    }

    /// The KVM VM file descriptor (for wiring more irqfds/ioeventfds).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Host address and size of each guest memory region (to tell guest
    /// memory apart from the VMM's own in `/proc/self/smaps`).
    pub fn memory_host_ranges(&self) -> Vec<(usize, usize)> {
        self.memory
            .iter()
            .filter_map(|r| {
                r.get_host_address(vm_memory::MemoryRegionAddress(0))
                    .ok()
                    .map(|p| (p as usize, r.len() as usize))
            })
            .collect()
    }
}

/// Controls a [`Vm`] from anywhere; cheap to clone. Once the VM is gone
/// its calls do nothing.
#[derive(Clone)]
pub struct VmHandle(Arc<vcpu::Control>);

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("done", &self.0.is_done())
            .finish()
    }
}

impl VmHandle {
    /// Asks the VM to stop (see [`Vm::stop`]).
    pub fn stop(&self) {
        self.0.finish(Ok(ExitReason::Stopped));
    }

    /// Pauses every vCPU (see [`Vm::pause`]).
    pub fn pause(&self) {
        self.0.pause();
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        self.0.resume();
    }

    /// Whether the VM ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_done()
    }
}

/// Resident memory of this process outside guest RAM, in KiB: what the
/// VMM (and whatever else the process holds) costs beyond the guest.
///
/// Reads `/proc/self/smaps` and leaves out the mappings that back guest
/// memory of `vms`.
pub fn rss_excluding_guest_kib(vms: &[&Vm]) -> std::io::Result<u64> {
    let guest: Vec<(usize, usize)> = vms.iter().flat_map(|vm| vm.memory_host_ranges()).collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut total = 0u64;
    let mut skip = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                skip = guest.iter().any(|&(g, len)| start < g + len && g < end);
                continue;
            }
        }
        if first == "Rss:" && !skip {
            total += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.stop_threads() {
            log::error!("tearing down a VM: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn virtio() -> VirtioMmioDevice {
        VirtioMmioDevice {
            device: Arc::new(Mutex::new(Nop)),
            interrupt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            queue_notify: Vec::new(),
        }
    }

    #[test]
    fn cmdline_declares_virtio_devices_in_slot_order() {
        let b = VmBuilder::new().append_cmdline("quiet");
        assert_eq!(
            b.kernel_cmdline().unwrap(),
            format!("{DEFAULT_CMDLINE} quiet")
        );
        let b = b.virtio_mmio_device(virtio());
        assert_eq!(b.next_virtio_slot().base, 0xd000_1000);
        let b = b.virtio_mmio_device(virtio());
        assert_eq!(
            b.kernel_cmdline().unwrap(),
            format!(
                "{DEFAULT_CMDLINE} quiet virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6"
            )
        );
    }

    #[test]
    fn vm_and_builder_can_move_across_threads() {
        fn send<T: Send>() {}
        send::<Vm>();
        send::<VmBuilder>();
        fn sync<T: Send + Sync>() {}
        sync::<VmHandle>();
    }

    #[test]
    fn validation_happens_before_touching_kvm() {
        let e = VmBuilder::new().hugepages(true).memory_mib(3).build();
        assert!(matches!(e, Err(Error::HugepageSize(3))));
        let e = VmBuilder::new().memory_mib(MAX_MEMORY_MIB + 1).build();
        assert!(matches!(e, Err(Error::MemoryTooLarge { .. })));
        let mut b = VmBuilder::new();
        for _ in 0..=(layout::LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ) {
            b = b.virtio_mmio_device(virtio());
        }
        let e = b.virtio_mmio_device(virtio()).build();
        assert!(matches!(e, Err(Error::TooManyDevices(19))));
        assert!(matches!(
            VmBuilder::new().vcpus(0).build(),
            Err(Error::NoVcpus)
        ));
    }
}
