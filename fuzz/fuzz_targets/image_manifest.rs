//! Arbitrary bytes as image metadata: index, manifest, config, docker
//! manifest.json, digests and references. Parsing must never panic; a config
//! that parses must yield process defaults or a typed error.
#![no_main]

use hypercontainer_image::manifest::{
    parse_config, parse_docker_manifest, parse_index, parse_manifest, ref_name_matches,
    repo_tag_matches,
};
use hypercontainer_image::process::process_defaults;
use hypercontainer_image::{Digest, ProcessOverrides};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = parse_index(data, LIMIT);
    let _ = parse_manifest(data, LIMIT);
    let _ = parse_docker_manifest(data, LIMIT);
    if let Ok((config, diff_ids)) = parse_config(data, LIMIT) {
        assert_eq!(diff_ids.len(), config.rootfs().diff_ids().len());
        for d in &diff_ids {
            // Validated digests are safe path components.
            assert!(!d.hex().contains('/') && !d.hex().contains('.'));
            assert_eq!(Digest::parse(&d.to_string()).unwrap(), *d);
        }
        let _ = process_defaults(&config, &ProcessOverrides::new());
        let _ = process_defaults(
            &config,
            &ProcessOverrides::new().entrypoint(["/x"]).env("A", "b"),
        );
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = Digest::parse(s) {
            assert_eq!(d.to_string(), s);
        }
        let mid = (0..=s.len() / 2)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        let (a, b) = s.split_at(mid);
        let _ = ref_name_matches(a, b);
        let _ = repo_tag_matches(a, b);
    }
});
