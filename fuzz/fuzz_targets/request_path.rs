//! See `gatehouse::fuzzing::request_path`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::request_path(data);
});
