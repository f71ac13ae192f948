//! Fuzz target `line_codec`: see `fuzz/checks/line_codec.rs` for what is checked.
#![no_main]

#[path = "../checks/line_codec.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::line_codec(data));
