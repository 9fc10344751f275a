//! See `gatehouse::fuzzing::chunked`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::chunked(data);
});
