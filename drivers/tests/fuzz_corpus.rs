//! The driver fuzz corpus on stable Rust: every file of `fuzz/corpus/{device_reply,
//! registers}` goes through the fuzz targets' checks (`fuzz/checks/drivers.rs`: what an
//! instrument sends becomes a value that fits its datainfo or a clear error), then a
//! bounded, seeded randomized pass of mutations. See RELIABILITY.md.

#[path = "../../fuzz/checks/drivers.rs"]
mod checks;
#[path = "../../fuzz/checks/random.rs"]
mod random;

use random::{randomized, replay};

#[test]
fn device_reply_corpus() {
    replay("device_reply", checks::device_reply);
}

#[test]
fn device_reply_randomized() {
    randomized("device_reply", 21, 5000, checks::device_reply);
}

#[test]
fn registers_corpus() {
    replay("registers", checks::registers);
}

#[test]
fn registers_randomized() {
    randomized("registers", 22, 5000, checks::registers);
}
