//! The gateway's fuzz corpus on stable Rust: every file of `fuzz/corpus/{sniff,config,ws_frames}`
//! goes through the same checks as the fuzz targets (`fuzz/checks/gateway.rs`), then a
//! bounded, seeded randomized pass of mutations. See RELIABILITY.md.

#[path = "../fuzz/checks/gateway.rs"]
mod checks;
#[path = "../fuzz/checks/random.rs"]
mod random;

use random::{corpus, mutate, Checking, Rng};

fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let _guard = Checking(&path.to_string_lossy(), &bytes);
        check(&bytes);
    }
}

fn randomized(target: &str, seed: u64, cases: usize, check: fn(&[u8])) {
    let files = corpus(target);
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        let (_, a) = rng.pick(&files);
        let (_, b) = rng.pick(&files);
        let input = mutate(&mut rng, a, b);
        let _guard = Checking(&format!("{target} case {case} (seed {seed})"), &input);
        check(&input);
    }
}

#[test]
fn sniff_corpus() {
    replay("sniff", checks::sniff);
}

#[test]
fn sniff_randomized() {
    randomized("sniff", 11, 3000, checks::sniff);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn config_randomized() {
    // Loading a config builds every description: fewer cases, still a few seconds.
    randomized("config", 12, 600, checks::config);
}

#[test]
fn ws_frames_corpus() {
    replay("ws_frames", checks::ws_frames);
}

#[test]
fn ws_frames_randomized() {
    randomized("ws_frames", 13, 3000, checks::ws_frames);
}
