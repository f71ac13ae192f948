//! The gateway's fuzz corpus on stable Rust: every file of `fuzz/corpus/{sniff,config,ws_frames}`
//! goes through the same checks as the fuzz targets (`fuzz/checks/gateway.rs`), then a
//! bounded, seeded randomized pass of mutations. See RELIABILITY.md.

#[path = "../fuzz/checks/gateway.rs"]
mod checks;
#[path = "../fuzz/checks/random.rs"]
mod random;

use random::{randomized, replay};

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
