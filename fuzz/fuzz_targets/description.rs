//! Fuzz target `description`: see `fuzz/checks/proto.rs` for what is checked.
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "../checks/proto.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::description(data));
