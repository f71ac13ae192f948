//! Fuzz target `ws_frames`: see `fuzz/checks/gateway.rs` for what is checked.
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "../checks/gateway.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ws_frames(data));
