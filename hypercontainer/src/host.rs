//! What this host's `/dev/kvm` can do.
//!
//! The SDK targets hardware-assisted KVM (Intel VT-x, AMD-V, bare metal or
//! nested). Some hosts serve `/dev/kvm` through PVM ("Pagetable-based
//! Virtual Machine"), which only runs guest kernels built for the PVM ABI;
//! a stock Linux guest dies early in boot there. [`detect_kvm`] tells the
//! two apart so that errors can say so plainly.

use std::path::Path;

/// The kind of KVM this host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted KVM (VT-x or AMD-V): stock Linux guests boot.
    Hardware,
    /// `/dev/kvm` is served by PVM: only PVM-ABI guest kernels boot.
    Pvm,
    /// There is no `/dev/kvm` on this host.
    Missing,
}

impl KvmKind {
    /// Whether a stock Linux guest kernel can boot on this host.
    pub fn can_boot_linux(self) -> bool {
        self == KvmKind::Hardware
    }
}

/// Detects the kind of KVM behind `/dev/kvm`.
///
/// ```
/// let kind = hypercontainer::host::detect_kvm();
/// println!("KVM here: {kind:?}");
/// ```
pub fn detect_kvm() -> KvmKind {
    detect_kvm_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn detect_kvm_at(dev: &Path, modules: &Path) -> KvmKind {
    if !dev.exists() {
        KvmKind::Missing
    } else if modules.join("kvm_pvm").exists() {
        KvmKind::Pvm
    } else {
        KvmKind::Hardware
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_device_and_module() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        let modules = dir.path().join("module");
        std::fs::create_dir(&modules).unwrap();
        assert_eq!(detect_kvm_at(&dev, &modules), KvmKind::Missing);
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(detect_kvm_at(&dev, &modules), KvmKind::Hardware);
        std::fs::create_dir(modules.join("kvm_pvm")).unwrap();
        assert_eq!(detect_kvm_at(&dev, &modules), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.can_boot_linux());
    }
}
