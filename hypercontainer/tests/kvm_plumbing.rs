//! KVM plumbing: tiny hand-assembled real-mode guests that exercise port
//! I/O and MMIO dispatch, `hlt`, pause/resume/stop, several vCPUs, the
//! i8042 reset path and panics at the vCPU thread boundary. They need a
//! `/dev/kvm` but no guest kernel, so they run on any KVM host (PVM
//! included).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercontainer::host::{detect_kvm, KvmKind};
use hypercontainer::vmm::vcpu::Activity;
use hypercontainer::vmm::{
    BusDevice, Error, ExitReason, MmioSlot, RawCode, RawMode, VirtioMmioDevice, Vm, VmBuilder,
    STOP_GRACE,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const LOAD: u64 = 0x1000;
const PROBE_PORT: u16 = 0x510;
const MMIO_BASE: u64 = 0x10_0000;

/// A device that records every access and answers reads with a pattern.
#[derive(Default)]
struct Probe {
    writes: Vec<(u64, Vec<u8>, String)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x10 + offset as u8 + i as u8;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.writes.push((offset, data.to_vec(), thread));
    }
}

fn have_kvm() -> bool {
    if detect_kvm() == KvmKind::Missing {
        eprintln!("skipping: no /dev/kvm on this host");
        return false;
    }
    true
}

fn raw(code: &[u8], entries: &[u16]) -> RawCode {
    RawCode {
        entries: entries.iter().map(|&e| u64::from(e)).collect(),
        ..RawCode::real(code, LOAD as u16)
    }
}

fn wait(vm: &mut Vm) -> hypercontainer::vmm::Result<ExitReason> {
    vm.wait_timeout(Duration::from_secs(20))
        .expect("the VM did not end within 20 s")
}

#[test]
fn port_io_out_and_in_reach_the_device() {
    if !have_kvm() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe::default()));
    #[rustfmt::skip]
    let code = [
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xb0, 0x42,       // mov al, 0x42
        0xee,             // out dx, al
        0x42,             // inc dx         (0x511)
        0xec,             // in al, dx      (probe answers 0x11)
        0x04, 0x01,       // add al, 1
        0xee,             // out dx, al     (0x12 to 0x511)
        0xf4,             // hlt
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(raw(&code, &[LOAD as u16]))
        .pio_device(PROBE_PORT, 2, probe.clone())
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Halted);
    let p = probe.lock().unwrap();
    let writes: Vec<_> = p.writes.iter().map(|(o, d, _)| (*o, d.clone())).collect();
    assert_eq!(writes, vec![(0, vec![0x42]), (1, vec![0x12])]);
    assert_eq!(p.reads, vec![(1, 1)]);
    assert!(vm.boot_times().first_run.is_some());
}

#[test]
fn mmio_read_and_write_reach_the_device() {
    if !have_kvm() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe::default()));
    let port = Arc::new(Mutex::new(Probe::default()));
    // 1 MiB of RAM; ES = 0xffff reaches 0x100000+ in real mode (no A20
    // wrap under KVM), which is MMIO.
    #[rustfmt::skip]
    let code = [
        0xb8, 0xff, 0xff,                   // mov ax, 0xffff
        0x8e, 0xc0,                         // mov es, ax
        0x26, 0xc6, 0x06, 0x10, 0x00, 0x5a, // mov byte [es:0x10], 0x5a  -> MMIO 0x100000
        0x26, 0xa1, 0x12, 0x00,             // mov ax, [es:0x12]         <- MMIO 0x100002
        0xba, 0x10, 0x05,                   // mov dx, 0x510
        0xef,                               // out dx, ax
        0xf4,                               // hlt
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(raw(&code, &[LOAD as u16]))
        .mmio_device(MMIO_BASE, 0x1000, probe.clone())
        .pio_device(PROBE_PORT, 2, port.clone())
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Halted);
    let p = probe.lock().unwrap();
    assert_eq!(p.writes.len(), 1);
    assert_eq!((p.writes[0].0, p.writes[0].1.clone()), (0, vec![0x5a]));
    assert_eq!(p.reads, vec![(2, 2)]);
    // The guest read 0x12, 0x13 and sent them back as a 16-bit OUT.
    let w = &port.lock().unwrap().writes;
    assert_eq!(w[0].1, vec![0x12, 0x13]);
    assert_eq!(vm.mmio_bus().unhandled(), 0);
}

#[test]
fn unknown_addresses_are_ignored_and_counted() {
    if !have_kvm() {
        return;
    }
    let port = Arc::new(Mutex::new(Probe::default()));
    #[rustfmt::skip]
    let code = [
        0xba, 0x00, 0x06, // mov dx, 0x600  (nobody there)
        0xb0, 0x77,       // mov al, 0x77
        0xee,             // out dx, al
        0xec,             // in al, dx      (reads 0)
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xee,             // out dx, al
        0xf4,             // hlt
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(raw(&code, &[LOAD as u16]))
        .pio_device(PROBE_PORT, 1, port.clone())
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Halted);
    assert_eq!(port.lock().unwrap().writes[0].1, vec![0]);
    assert_eq!(vm.pio_bus().unhandled(), 2);
}

#[test]
fn two_vcpus_run_their_own_code_on_their_own_threads() {
    if !have_kvm() {
        return;
    }
    let probe = Arc::new(Mutex::new(Probe::default()));
    let mut code = vec![0u8; 0x200];
    // vCPU 0 at 0x1000: out 0x510, 0xa0; hlt
    code[..6].copy_from_slice(&[0xba, 0x10, 0x05, 0xb0, 0xa0, 0xee]);
    code[6] = 0xf4;
    // vCPU 1 at 0x1100: out 0x511, 0xb1; hlt
    code[0x100..0x107].copy_from_slice(&[0xba, 0x11, 0x05, 0xb0, 0xb1, 0xee, 0xf4]);
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .vcpus(2)
        .raw_code(raw(&code, &[0x1000, 0x1100]))
        .pio_device(PROBE_PORT, 2, probe.clone())
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Halted);
    let mut w = probe.lock().unwrap().writes.clone();
    w.sort();
    assert_eq!(
        w,
        vec![
            (0, vec![0xa0], "vcpu0".to_string()),
            (1, vec![0xb1], "vcpu1".to_string())
        ]
    );
}

#[test]
fn pause_resume_and_stop_a_spinning_guest() {
    if !have_kvm() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xff, 0x06, 0x00, 0x20, // inc word [0x2000]
        0xeb, 0xfa,             // jmp back
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(raw(&code, &[LOAD as u16]))
        .build()
        .unwrap();
    let counter = |vm: &Vm| -> u16 { vm.memory().read_obj(GuestAddress(0x2000)).unwrap() };
    let start = Instant::now();
    while counter(&vm) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "guest never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.pause();
    let a = counter(&vm);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&vm), a, "the guest ran while paused");
    assert!(!vm.is_finished());
    vm.resume();
    let start = Instant::now();
    while counter(&vm) == a {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "guest did not resume"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // A guest that never exits to the VMM is still stopped promptly, here
    // from another thread while this one waits.
    let handle = vm.handle();
    let t = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.stop();
        handle
    });
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Stopped);
    assert!(stopper.join().unwrap().is_finished());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(matches!(vm.wait(), Err(Error::AlreadyCollected)));
}

#[test]
fn dropping_a_running_vm_stops_and_joins_it() {
    if !have_kvm() {
        return;
    }
    let vm = VmBuilder::new()
        .memory_mib(1)
        .vcpus(2)
        .raw_code(raw(&[0xeb, 0xfe], &[LOAD as u16])) // jmp $ on both vCPUs
        .build()
        .unwrap();
    let start = Instant::now();
    while vm.boot_times().first_run.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "guest never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(!vm.is_finished());
    // Drop kicks both spinning vCPUs out of KVM_RUN and joins their threads.
    let t = Instant::now();
    drop(vm);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A device whose writes block until the test lets them go.
struct Blocking {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl BusDevice for Blocking {
    fn read(&mut self, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, _: &[u8]) {
        let _ = self.entered.send(());
        let _ = self.release.recv();
    }
}

#[test]
fn a_vcpu_stuck_in_a_device_does_not_block_teardown() {
    if !have_kvm() {
        return;
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let device = Blocking {
        entered: entered_tx,
        release: release_rx,
    };
    #[rustfmt::skip]
    let code = [
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xee,             // out dx, al  (blocks in the device)
        0xf4,             // hlt
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .pio_device(PROBE_PORT, 1, Arc::new(Mutex::new(device)))
        .raw_code(raw(&code, &[LOAD as u16]))
        .build()
        .unwrap();
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the guest reached the device");
    vm.stop();
    let t = Instant::now();
    match vm.wait() {
        Err(Error::VcpuUnresponsive {
            vcpu: 0,
            activity:
                Activity::Pio {
                    port: PROBE_PORT,
                    write: true,
                },
            ..
        }) => {}
        other => panic!("expected an unresponsive vCPU error, got {other:?}"),
    }
    let waited = t.elapsed();
    assert!(
        waited >= STOP_GRACE && waited < STOP_GRACE + Duration::from_secs(5),
        "{waited:?}"
    );
    drop(vm);
    // The detached thread finishes on its own once the device returns.
    release.send(()).unwrap();
}

#[test]
fn i8042_reset_ends_the_vm_with_reset() {
    if !have_kvm() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xeb, 0xfe, // jmp $  (must be stopped by the reset)
    ];
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .vcpus(2)
        .raw_code(raw(&code, &[LOAD as u16, LOAD as u16 + 4]))
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Reset);
}

#[test]
fn virtio_mmio_slot_wires_window_and_queue_notify_ioeventfd() {
    if !have_kvm() {
        return;
    }
    let transport = Arc::new(Mutex::new(Probe::default()));
    let port = Arc::new(Mutex::new(Probe::default()));
    let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let builder = VmBuilder::new().memory_mib(1);
    let slot = builder.next_virtio_slot();
    assert_eq!(
        slot,
        MmioSlot {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5
        }
    );
    // 32-bit flat code at 0x1000.
    #[rustfmt::skip]
    let code = [
        0xb8, 0x50, 0x00, 0x00, 0xd0,             // mov eax, 0xd0000050 (QueueNotify)
        0xc7, 0x00, 0x01, 0x00, 0x00, 0x00,       // mov dword [eax], 1  -> ioeventfd, not the device
        0xc7, 0x40, 0x20, 0x0f, 0x00, 0x00, 0x00, // mov dword [eax+0x20], 0xf (Status) -> device
        0x8b, 0x58, 0xb0,                         // mov ebx, [eax-0x50] (MagicValue) <- device
        0x89, 0xd8,                               // mov eax, ebx
        0x66, 0xba, 0x10, 0x05,                   // mov dx, 0x510
        0xef,                                     // out dx, eax
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al (reset)
        0xeb, 0xfe,                               // jmp $
    ];
    let mut vm = builder
        .raw_code(RawCode {
            mode: RawMode::Protected32,
            irqchip: true,
            ..RawCode::real(&code, LOAD as u16)
        })
        .pio_device(PROBE_PORT, 4, port.clone())
        .virtio_mmio_device(VirtioMmioDevice {
            device: transport.clone(),
            interrupt: interrupt.try_clone().unwrap(),
            queue_notify: vec![(1, notify.try_clone().unwrap())],
        })
        .build()
        .unwrap();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Reset);
    assert_eq!(
        notify.read().unwrap(),
        1,
        "QueueNotify did not signal the ioeventfd"
    );
    let t = transport.lock().unwrap();
    let writes: Vec<_> = t.writes.iter().map(|(o, d, _)| (*o, d.clone())).collect();
    assert_eq!(writes, vec![(0x70, vec![0x0f, 0, 0, 0])]);
    assert_eq!(t.reads, vec![(0, 4)]);
    assert_eq!(
        port.lock().unwrap().writes[0].1,
        vec![0x10, 0x11, 0x12, 0x13]
    );
    // The interrupt eventfd is an irqfd now: writing it is accepted.
    interrupt.write(1).unwrap();
}

struct Explodes;
impl BusDevice for Explodes {
    fn read(&mut self, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, _: &[u8]) {
        panic!("device bug");
    }
}

#[test]
fn a_panicking_device_ends_the_vm_not_the_process() {
    if !have_kvm() {
        return;
    }
    let code = [0xb0, 0x01, 0xe6, 0x70, 0xf4]; // out 0x70, 1; hlt
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .raw_code(raw(&code, &[LOAD as u16]))
        .pio_device(0x70, 2, Arc::new(Mutex::new(Explodes)))
        .build()
        .unwrap();
    match wait(&mut vm) {
        Err(Error::VcpuPanic { vcpu: 0, message }) => assert_eq!(message, "device bug"),
        other => panic!("expected a vCPU panic error, got {other:?}"),
    }
}

#[test]
fn user_errors_are_typed() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a kernel at all\n".repeat(100)).unwrap();

    let e = VmBuilder::new().vcpus(0).kernel(&text).build().unwrap_err();
    assert!(matches!(e, Error::NoVcpus), "{e}");
    let e = VmBuilder::new()
        .vcpus(100_000)
        .kernel(&text)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::TooManyVcpus { .. }), "{e}");
    let e = VmBuilder::new()
        .memory_mib(0)
        .kernel(&text)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::MemoryTooSmall { .. }), "{e}");
    let e = VmBuilder::new().build().unwrap_err();
    assert!(matches!(e, Error::NoKernel), "{e}");
    let missing = PathBuf::from("/nonexistent/vmlinux");
    let e = VmBuilder::new().kernel(&missing).build().unwrap_err();
    assert!(matches!(e, Error::KernelMissing { .. }), "{e}");
    let e = VmBuilder::new().kernel(&text).build().unwrap_err();
    assert!(matches!(e, Error::NotAKernel { .. }), "{e}");
    let e = VmBuilder::new()
        .kernel(&text)
        .initramfs(dir.path().join("missing.cpio"))
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InitramfsMissing { .. }), "{e}");
    let e = VmBuilder::new()
        .kernel(&text)
        .cmdline("x".repeat(5000))
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Cmdline(_)), "{e}");
    let e = VmBuilder::new()
        .kernel(&text)
        .cmdline("bad\u{0}byte")
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Cmdline(_)), "{e}");

    // An ELF whose segment ends at 24 MiB does not fit in 16 MiB.
    let mut elf = vec![0u8; 0x200];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[0x12] = 62; // EM_X86_64
    elf[0x20] = 0x40;
    elf[0x36] = 56;
    elf[0x38] = 1;
    elf[0x40] = 1; // PT_LOAD
    elf[0x40 + 0x18..0x40 + 0x20].copy_from_slice(&0x100_0000u64.to_le_bytes());
    elf[0x40 + 0x28..0x40 + 0x30].copy_from_slice(&0x80_0000u64.to_le_bytes());
    let small = dir.path().join("small-elf");
    std::fs::write(&small, &elf).unwrap();
    let e = VmBuilder::new()
        .kernel(&small)
        .memory_mib(16)
        .build()
        .unwrap_err();
    match e {
        Error::MemoryTooSmall {
            requested_mib: 16,
            minimum_mib,
        } => assert!(minimum_mib >= 24),
        other => panic!("expected MemoryTooSmall, got {other}"),
    }
}

/// On a PVM host a stock Linux kernel cannot boot; the error must say so.
/// Runs only where /dev/kvm is PVM and a guest kernel is available.
#[test]
fn a_pvm_host_explains_why_linux_does_not_boot() {
    let Some(kernel) = std::env::var_os("HYPERCONTAINER_KERNEL").map(PathBuf::from) else {
        eprintln!("skipping: HYPERCONTAINER_KERNEL is not set");
        return;
    };
    if detect_kvm() != KvmKind::Pvm {
        eprintln!("skipping: this host's KVM is not PVM");
        return;
    }
    let mut vm = VmBuilder::new().kernel(&kernel).build().unwrap();
    let e = wait(&mut vm).unwrap_err();
    assert!(matches!(e, Error::PvmHost { .. }), "{e}");
    assert!(e.to_string().contains("PVM"), "{e}");
}

fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn hugepage_memory_runs_or_fails_cleanly() {
    if !have_kvm() {
        return;
    }
    let code = [0xb0, 0x07, 0xe6, 0x10, 0xf4]; // out 0x10, 7; hlt
    let port = Arc::new(Mutex::new(Probe::default()));
    let built = VmBuilder::new()
        .memory_mib(2)
        .hugepages(true)
        .raw_code(raw(&code, &[LOAD as u16]))
        .pio_device(0x10, 1, port.clone())
        .build();
    if free_hugepages() >= 1 {
        let mut vm = built.expect("hugepages are reserved, the VM must build");
        assert_eq!(wait(&mut vm).unwrap(), ExitReason::Halted);
        assert_eq!(port.lock().unwrap().writes[0].1, vec![7]);
    } else {
        // No hugepages reserved on this host: a typed error, not a crash.
        assert!(
            matches!(built, Err(Error::MemoryAlloc(_))),
            "{:?}",
            built.err()
        );
    }
}

#[test]
fn the_kick_signal_is_configurable() {
    if !have_kvm() {
        return;
    }
    let signal = vmm_sys_util::signal::SIGRTMIN() + 3;
    let mut vm = VmBuilder::new()
        .memory_mib(1)
        .kick_signal(signal)
        .raw_code(raw(&[0xeb, 0xfe], &[LOAD as u16])) // jmp $
        .build()
        .unwrap();
    // The VM installed its handler for that signal.
    // SAFETY: sigaction with a null new action only reads the current one
    // into a zeroed plain-data struct.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `current` outlives the call.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    assert_eq!(rc, 0);
    assert_ne!(current.sa_sigaction, libc::SIG_DFL);
    assert_ne!(current.sa_sigaction, libc::SIG_IGN);
    let start = Instant::now();
    while vm.boot_times().first_run.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "guest never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.pause();
    vm.resume();
    vm.stop();
    assert_eq!(wait(&mut vm).unwrap(), ExitReason::Stopped);
}
