//! Config parsing and compilation (see `gatehouse::fuzzing::config`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::config(data);
});
