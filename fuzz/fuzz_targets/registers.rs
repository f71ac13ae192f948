//! Fuzz target `registers`: see `fuzz/checks/drivers.rs` for what is checked.
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "../checks/drivers.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::registers(data));
