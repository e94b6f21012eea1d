use super::*;

#[test]
fn nonces_differ() {
    let a = random_nonce().unwrap();
    assert_eq!(a.len(), 16);
    assert_ne!(a, random_nonce().unwrap());
}

#[test]
fn builder_validates() {
    assert!(matches!(
        TestHost::builder().build(),
        Err(Error::Invalid(_))
    ));
    let base = || {
        TestHost::builder()
            .mode(Mode::Direct)
            .qemu("/q")
            .busybox("/b")
    };
    assert!(base().build().is_err(), "no jobs");
    assert!(base().job(Job::new("a", "true")).build().is_ok());
    assert!(base()
        .job(Job::new("a", "true"))
        .job(Job::new("a", "true"))
        .build()
        .is_err());
    assert!(base()
        .job(Job::new("a", "true").env("BAD-NAME", "x"))
        .build()
        .is_err());
    assert!(base()
        .memory_mib(64)
        .job(Job::new("a", "true"))
        .build()
        .is_err());
}

#[test]
fn direct_mode_runs_jobs_and_reports() {
    let host = TestHost::builder()
        .mode(Mode::Direct)
        .qemu("/usr/bin/true")
        .busybox("/usr/bin/true")
        .env("SHARED", "s")
        .echo(None)
        .job(
            Job::new("ok", "/bin/sh")
                .args([
                    "-c",
                    "echo out; echo err >&2; echo $SHARED$OWN $HYPERCONTAINER_TESTHOST",
                ])
                .env("OWN", "o"),
        )
        .job(Job::new("fail", "/bin/sh").args(["-c", "exit 3"]))
        .build()
        .unwrap();
    let report = host.run().unwrap();
    assert_eq!(report.jobs.len(), 2);
    let ok = &report.jobs[0];
    assert!(ok.success());
    assert!(ok.output.contains("out\n") && ok.output.contains("err\n"));
    assert!(ok.output.contains("so direct\n"), "{}", ok.output);
    assert_eq!(report.jobs[1].exit_code, 3);
}

#[test]
fn a_job_past_its_own_timeout_is_killed_and_the_next_one_runs() {
    let host = TestHost::builder()
        .mode(Mode::Direct)
        .qemu("/usr/bin/true")
        .busybox("/usr/bin/true")
        .echo(None)
        .job(
            Job::new("sleeper", "/bin/sh")
                .args(["-c", "echo before; exec sleep 30"])
                .timeout(Duration::from_millis(300)),
        )
        .job(Job::new("next", "/bin/sh").args(["-c", "echo after"]))
        .build()
        .unwrap();
    let started = Instant::now();
    let report = host.run().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let [sleeper, next] = &report.jobs[..] else {
        panic!("{report:?}")
    };
    assert!(sleeper.timed_out && !sleeper.success(), "{sleeper:?}");
    assert!(sleeper.output.contains("before\n"), "{sleeper:?}");
    assert!(next.success() && !next.timed_out, "{next:?}");
    assert!(next.output.contains("after"), "{next:?}");
}

#[test]
fn direct_mode_times_out_naming_the_job() {
    let host = TestHost::builder()
        .mode(Mode::Direct)
        .qemu("/usr/bin/true")
        .busybox("/usr/bin/true")
        .timeout(Duration::from_millis(300))
        .echo(None)
        .job(Job::new("sleeper", "/bin/sh").args(["-c", "sleep 5"]))
        .build()
        .unwrap();
    let err = host.run().unwrap_err();
    assert!(err.to_string().contains("job sleeper"), "{err}");
}

#[test]
fn inside_path_resolves_parent_symlinks_only() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("lib.so.1.2"), b"x").unwrap();
    std::os::unix::fs::symlink("lib.so.1.2", real.join("lib.so.1")).unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
    let got = inside_path(&dir.path().join("link/lib.so.1")).unwrap();
    assert_eq!(got, real.canonicalize().unwrap().join("lib.so.1"));
}

#[test]
fn packs_jobs_libraries_modules_and_init() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("modules")).unwrap();
    std::fs::write(d.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(d.join("modules/irqbypass.ko"), b"irq").unwrap();
    std::fs::write(d.join("modules/kvm.ko"), b"kvm").unwrap();
    std::fs::write(d.join("modules.order"), "irqbypass.ko\nkvm.ko\n").unwrap();
    std::fs::write(d.join("vmlinux"), b"guest").unwrap();
    std::fs::write(d.join("bzImage"), b"guest-bz").unwrap();
    std::fs::write(d.join("data"), b"payload").unwrap();
    let assets = HostAssets::from_dir(d).unwrap();
    let sh = inside_path(Path::new("/bin/sh")).unwrap();
    let host = TestHost::builder()
        .mode(Mode::Emulated(assets.clone()))
        .qemu("/bin/sh")
        .busybox("/bin/sh")
        .guest_kernel(d.join("vmlinux"), d.join("bzImage"))
        .file(d.join("data"), "/srv/data")
        .job(Job::new("t", "/bin/sh").args(["-c", "echo it's"]))
        .build()
        .unwrap();
    let out = d.join("host.cpio");
    let nonce = host.pack(&assets, &out).unwrap();
    let entries = hypercontainer::initramfs::parse(&std::fs::read(&out).unwrap()).unwrap();

    let init = String::from_utf8(entries["init"].data.clone()).unwrap();
    assert!(init.contains(&format!("HCTH-{nonce} BEGIN 0")));
    assert!(init.contains(&format!("exec '{}' '-c' 'echo it'\\''s'", sh.display())));
    let guest = inside_path(&d.join("vmlinux")).unwrap();
    assert!(init.contains(&format!("export {KERNEL_ENV}='{}'", guest.display())));
    assert!(init.contains("export HYPERCONTAINER_TESTHOST='emulated'"));
    let irq = init.find("insmod '/hc/modules/00-irqbypass.ko'").unwrap();
    assert!(irq < init.find("insmod '/hc/modules/01-kvm.ko'").unwrap());

    let key = |p: &Path| p.to_str().unwrap().trim_start_matches('/').to_string();
    assert_eq!(entries[&key(&guest)].data, b"guest");
    assert_eq!(entries["srv/data"].data, b"payload");
    assert_eq!(entries["hc/modules/01-kvm.ko"].data, b"kvm");
    assert_eq!(entries["dev/console"].rdev, (5, 1));
    assert!(entries.contains_key(&key(&sh)));
    for lib in ldd::shared_libraries(Path::new("/bin/sh")).unwrap() {
        let inside = inside_path(&lib).unwrap();
        let packed = &entries[&key(&inside)];
        assert_eq!(
            packed.data,
            std::fs::read(&lib).unwrap(),
            "{}",
            lib.display()
        );
    }
    if let Ok(target) = std::fs::read_link("/lib") {
        assert_eq!(entries["lib"].data, target.to_str().unwrap().as_bytes());
    }
}

#[test]
fn assets_layout() {
    let dir = tempfile::tempdir().unwrap();
    assert!(HostAssets::from_dir(dir.path()).is_err());
    std::fs::create_dir(dir.path().join("modules")).unwrap();
    std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
    std::fs::write(dir.path().join("modules/a.ko"), b"a").unwrap();
    std::fs::write(dir.path().join("modules/b.ko"), b"b").unwrap();
    std::fs::write(dir.path().join("modules.order"), "b.ko\na.ko\n").unwrap();
    let a = HostAssets::from_dir(dir.path()).unwrap();
    assert_eq!(a.modules[0], dir.path().join("modules/b.ko"));
    assert_eq!(a.modules[1], dir.path().join("modules/a.ko"));
    std::fs::write(dir.path().join("modules.order"), "c.ko\n").unwrap();
    assert!(HostAssets::from_dir(dir.path()).is_err());
}
