//! The fuzz targets' corpora (fuzz/corpus: the hand-made `seed-*` inputs and
//! what libFuzzer kept from 10-minute runs, set-cover minimised), replayed
//! through the same entry points on the stable toolchain, with truncations
//! and bit flips of every seed: what was once found stays covered in every
//! `cargo test`.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("cni_config", headcni::fuzzing::cni_config),
    ("spec", headcni::fuzzing::spec),
    ("saved_plan", headcni::fuzzing::saved_plan),
    ("snapshot", headcni::fuzzing::snapshot),
    ("netlink_answer", headcni::fuzzing::netlink_answer),
];

#[test]
fn every_corpus_input_and_its_mutations_are_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            target(&data);
            inputs += 1;
            // What libFuzzer kept is replayed as it is; the hand-made seeds
            // are mutated too.
            let seed = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
            if !seed {
                continue;
            }
            // Every prefix (at a stride, to stay fast) and single-bit flips.
            let stride = (data.len() / 64).max(1);
            for cut in (0..data.len()).step_by(stride) {
                target(&data[..cut]);
            }
            let mut flipped = data.clone();
            for at in (0..flipped.len()).step_by(stride) {
                for bit in [0x01u8, 0x80] {
                    flipped[at] ^= bit;
                    target(&flipped);
                    flipped[at] ^= bit;
                }
            }
        }
        assert!(inputs > 0, "{name}: the corpus is empty");
    }
}
