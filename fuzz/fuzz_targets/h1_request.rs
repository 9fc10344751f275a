//! See `gatehouse::fuzzing::h1_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::h1_request(data);
});
